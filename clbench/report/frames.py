"""The long matrix frame of a run: one row per (cell, i, j). `clbench.load` returns it.

The report reads every cell's matrix back out of this frame (`cell_arrays`,
used by `aggregate.analyze`) instead of from the result dicts, so the numbers
a notebook gets from `clbench.load` are the ones the report's metrics,
tables and plots are computed from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from clbench.report.load import LoadedRun

# Columns of `matrix_frame`, before the `config.<key>` ones. Row i = -1 holds `initial`
# (the untrained model), i = 0..T-1 the metric after training experience i; j is the test experience.
FRAME_COLUMNS = [
    "cell_id", "scenario", "label", "strategy", "seed", "config_hash",
    "metric_name", "higher_is_better", "i", "j", "value",
]  # fmt: skip
INITIAL_ROW = -1
CONFIG_PREFIX = "config."


def flatten_config(config: dict[str, Any], prefix: str = CONFIG_PREFIX) -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"config.train.lr": 0.1}. Empty tables give no column;
    lists become tuples so that the columns can be grouped on."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def _values(data: dict[str, Any]) -> np.ndarray:
    """(T + 1) x T: `initial` on top of the matrix; JSON nulls become NaN."""
    rows = [data["initial"], *data["matrix"]]
    return np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)


def matrix_frame(run: LoadedRun) -> pd.DataFrame:
    """Long format of every valid cell of `run`, in `run.cells` order, then i, then j.

    Failed and skipped cells have no matrix: they are not rows but one line each in
    `attrs["failed"]` / `attrs["skipped"]`.
    """
    heads, blocks = [], []
    for data in run.cells:
        heads.append({k: data[k] for k in FRAME_COLUMNS[:8]} | flatten_config(data.get("config") or {}))
        blocks.append(_values(data))
    if not heads:
        frame = pd.DataFrame(columns=FRAME_COLUMNS)
    else:
        cells = pd.DataFrame(heads)
        sizes = [b.size for b in blocks]
        frame = cells.iloc[np.repeat(np.arange(len(cells)), sizes)].reset_index(drop=True)
        frame["i"] = np.concatenate([np.repeat(np.arange(INITIAL_ROW, b.shape[1]), b.shape[1]) for b in blocks])
        frame["j"] = np.concatenate([np.tile(np.arange(b.shape[1]), b.shape[0]) for b in blocks])
        frame["value"] = np.concatenate([b.ravel() for b in blocks])
        config = [c for c in frame.columns if c not in FRAME_COLUMNS]
        frame = frame[FRAME_COLUMNS + config]
    frame.attrs["failed"] = [str(f) for f in run.failed]
    frame.attrs["skipped"] = [str(s) for s in run.skipped]
    return frame


def cell_arrays(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cell_id -> (initial of length T, T x T matrix), read back from a `matrix_frame`."""
    ordered = frame.sort_values(["cell_id", "i", "j"], kind="stable")
    ids, i, j = (ordered[c].to_numpy() for c in ("cell_id", "i", "j"))
    values = ordered["value"].to_numpy(dtype=float)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if not len(ids):
        return out
    # Slices of consecutive rows per cell: a pandas groupby costs ~0.5 ms per cell.
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
        T = int(j[start:end].max()) + 1
        if end - start != (T + 1) * T or i[start] != INITIAL_ROW:
            raise ValueError(f"cell {ids[start]}: {end - start} rows in the matrix frame, expected (T + 1) x T = {(T + 1) * T}")
        block = values[start:end].reshape(T + 1, T)
        out[str(ids[start])] = (block[0], block[1:])
    return out


CURVE_COLUMNS = ["cell_id", "scenario", "label", "strategy", "seed", "iteration", "experience", "j", "value"]


def curve_frame(run: LoadedRun) -> pd.DataFrame:
    """The anytime curves (train.eval_every) of `run` in long format: one row per (cell, point,
    seen task j). Cells without a curve have no rows; tasks not yet seen at a point are left out."""
    rows = []
    for data in run.cells:
        curve = data.get("anytime")
        if not curve:
            continue
        head = [data[k] for k in CURVE_COLUMNS[:5]]
        for it, exp, values in zip(curve["iteration"], curve["experience"], curve["values"], strict=True):
            rows += [[*head, it, exp, j, float(v)] for j, v in enumerate(values) if v is not None]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)
