"""The Python API: `run` one cell, `load` a run directory, read its `summary`. See docs/api.md.

These are the functions the command line and the report use themselves, so a
notebook gets exactly what `clbench run`, `clbench bench` and `clbench report`
compute: `clbench run` is `run(..., check=False)` plus printing, `summary.csv` is
`summary(run_dir)` written out, and the report's matrices come from the frame
`load` returns (`clbench.report.frames`). Importing this module is cheap; torch
is only imported when a cell actually runs.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.errors import ClbenchError, ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from clbench.engines import EngineOptions
    from clbench.suite import SuiteOutcome

__all__ = ["CellFailedError", "Result", "curves", "load", "run", "summary"]


class CellFailedError(ClbenchError):
    """The cell ran and failed (bad data, NaN loss, ...); its failed result is stored.

    `result` is the failed `Result` (its `path` is the stored result.json). Exit code
    1, like `clbench run` for a failed cell: the input was valid, the run was not.
    """

    exit_code = 1

    def __init__(self, result: Result):
        super().__init__(f"cell {result.cell_id} failed: {result.error}")
        self.result = result


@dataclass(eq=False)  # a DataFrame field has no truth value: compare `data` instead
class Result:
    """One stored cell, as `run` returns it. `data` is the result.json dict itself."""

    path: Path  # RUN_DIR/cells/<cell_id>/result.json
    data: dict[str, Any] = field(repr=False)
    # T x T metric matrix: row i = after training experience i, column j = test experience j.
    matrix: pd.DataFrame | None = field(default=None, repr=False)
    # clbench.metrics.cell_metrics scalars (acc, forgetting, bwt, fwt, ..., costs); empty when failed.
    metrics: dict[str, float] = field(default_factory=dict, repr=False)
    outcome: SuiteOutcome | None = field(default=None, repr=False, compare=False)  # the engine's counts

    @property
    def cell_id(self) -> str:
        return self.data.get("cell_id") or self.path.parent.name

    @property
    def run_dir(self) -> Path:
        return self.path.parent.parent.parent

    @property
    def status(self) -> str:
        return self.data.get("status", "?")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    @property
    def config(self) -> dict[str, Any]:
        return self.data.get("config", {})

    @property
    def config_hash(self) -> str:
        return self.data.get("config_hash", "")

    @property
    def initial(self) -> list[float]:
        """The untrained model's metric on each test experience (the FWT baseline b)."""
        return self.data.get("initial") or []

    def _metric(self, key: str) -> float:
        return self.metrics.get(key, math.nan)

    @property
    def acc(self) -> float:
        return self._metric("acc")

    @property
    def forgetting(self) -> float:
        return self._metric("forgetting")

    @property
    def bwt(self) -> float:
        return self._metric("bwt")

    @property
    def num_params(self) -> int | None:
        return int(self.data["num_params"]) if self.ok else None

    @property
    def wall_seconds(self) -> float:
        return float(self.data.get("wall_seconds") or 0.0)

    def __repr__(self) -> str:
        if not self.ok:
            return f"Result({self.cell_id}, status={self.status!r}, error={self.error!r})"
        return (f"Result({self.cell_id}, {self.data.get('metric_name')} {self.acc:.4f}, "
                f"forgetting {self.forgetting:.4f}, BWT {self.bwt:.4f}, wall {self.wall_seconds:.1f}s)")

    @staticmethod
    def from_file(path: str | Path, outcome: SuiteOutcome | None = None) -> Result:
        """Read a stored result.json; raises ClbenchError when it is missing or not a result."""
        from clbench.store import read_result

        path = Path(path)
        data = read_result(path)
        if not isinstance(data, dict) or data.get("status") not in ("ok", "failed"):
            raise ClbenchError(f"no readable result at {path}")
        result = Result(path=path, data=data, outcome=outcome)
        if result.ok:
            import pandas as pd

            from clbench.metrics import as_matrix, cell_metrics

            R = as_matrix(data["matrix"])
            result.matrix = pd.DataFrame(R, index=pd.RangeIndex(len(R), name="i"),
                                         columns=pd.RangeIndex(len(R), name="j"))
            m = cell_metrics(data)
            result.metrics = {k: v for k, v in m.items() if not isinstance(v, list)}  # scalars only
        return result


def config_overrides(overrides: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Merge `overrides` (keys as in `--set`: "strategy.ewc_lambda") with keyword
    overrides, where `__` stands for the dot (strategy__ewc_lambda=10).

    Keys are not checked here: `resolve_config` checks them exactly as for `--set`.
    """
    merged = dict(overrides or {})
    for name, value in kwargs.items():
        key = name.replace("__", ".")
        if key in merged:
            raise ConfigError(f"config key {key!r} given twice (as {name}= and in overrides)")
        merged[key] = value
    return merged


def run(
    scenario: str,
    strategy: str,
    *,
    seed: int = 0,
    profile: str = "quick",
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    data_root: str | Path | None = None,
    download: bool | None = None,
    progress: bool = True,
    plugin_files: list[str] = (),
    deterministic: bool = False,
    log: tuple[str, ...] | list[str] = (),
    options: EngineOptions | None = None,
    check: bool = True,
    **kw_overrides: Any,
) -> Result:
    """Run one cell in this process and store it under `out`; what `clbench run` does.

    `out` defaults to a new temporary directory (kept, see `Result.path`), so that
    calls with different configs never collide; a directory already holding this
    (scenario, label, seed) with another config is refused, as on the command line.
    Bad input raises a ClbenchError (the same one-line messages as the CLI) before
    anything runs. A cell that runs and fails raises CellFailedError, or with
    `check=False` comes back with `status == "failed"`.
    """
    from clbench.engines import EngineOptions
    from clbench.registry import load_plugin_file
    from clbench.resolve import resolve_config
    from clbench.store import result_path
    from clbench.suite import cell_ids, run_suite

    for path in plugin_files:
        load_plugin_file(path)
    cfg = resolve_config(scenario, strategy, seed=seed, profile=profile,
                         overrides=config_overrides(overrides, kw_overrides))
    if options is None:
        from clbench.tracking import parse_log, require

        log = parse_log([log] if isinstance(log, str) else log)  # "tensorboard" or a list of names
        require(log)  # a missing extra: one line before anything runs, as with `--log`
        options = EngineOptions(deterministic=deterministic, log=log)  # a missing extra: one line before anything runs, as `--log`
    elif deterministic or log:
        raise ConfigError("give deterministic and log either directly or in options, not both")
    run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="clbench-run-"))
    outcome = run_suite([cfg], run_dir, resume=False, data_root=data_root, download=download,
                        plugin_files=list(plugin_files), progress=progress,
                        suite_name=f"{cfg.scenario}/{cfg.label}", options=options)
    (cid,) = cell_ids([cfg])
    result = Result.from_file(result_path(run_dir, cid), outcome=outcome)
    if check and not result.ok:
        raise CellFailedError(result)
    return result


def load(run_dir: str | Path) -> pd.DataFrame:
    """Every valid cell of `run_dir` in long format: one row per (cell, i, j).

    i = -1 holds the untrained model's values (`initial`), i = 0..T-1 the matrix
    rows. Failed and skipped cells are not rows; they are listed in
    `frame.attrs["failed"]` and `frame.attrs["skipped"]` (one line each).
    Columns: clbench.report.frames.FRAME_COLUMNS, then the cell's config
    flattened as `config.<key>` (e.g. `config.train.lr`, `config.strategy_args.ewc_lambda`).
    """
    from clbench.report.frames import matrix_frame
    from clbench.report.load import load_run

    return matrix_frame(load_run(run_dir))


def curves(run_dir: str | Path) -> pd.DataFrame:
    """The anytime-evaluation curves of `run_dir` (cells run with train.eval_every > 0), one row
    per (cell, evaluated iteration, seen task j): clbench.report.frames.CURVE_COLUMNS.
    docs/stability_gap.md defines them; cells without a curve give no rows."""
    from clbench.report.frames import curve_frame
    from clbench.report.load import load_run

    return curve_frame(load_run(run_dir))


def summary(run_dir: str | Path) -> pd.DataFrame:
    """The table `RUN_DIR/summary.csv` holds: one row per (scenario, label), mean and
    std over seeds (clbench.report.tables.SUMMARY_COLUMNS); no rows when no cell is valid."""
    from clbench.report import summary_table

    return summary_table(run_dir)
