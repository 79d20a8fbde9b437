"""`tuned.toml`: what `clbench tune` chose, per row, and how (docs/tuning.md).

    [pmnist.ewc]
    values = { "strategy.ewc_lambda" = 31.6 }
    protocol = "first_k"
    k = 2
    trials = 8
    ...

`clbench bench SUITE --tuned FILE` applies `values` as overrides on the
matching (scenario, label) rows and stores the whole record in each cell's
config (`config.tuning`), so the report can show what tuning cost.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import tomllib

from clbench.errors import ConfigError
from clbench.store import atomic_write_text

REQUIRED = ("values", "protocol", "trials", "seeds", "cpu_seconds")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} to TOML")


def dumps(records: dict[tuple[str, str], dict[str, Any]], header: str = "") -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    for (scenario, label), record in records.items():
        lines += ["", f"[{json.dumps(scenario)}.{json.dumps(label)}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in record.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_tuned(path: Path, records: dict[tuple[str, str], dict[str, Any]], header: str = "") -> None:
    """Atomically: a killed `clbench tune` never leaves half a file."""
    atomic_write_text(Path(path), dumps(records, header))


def read_tuned(path: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The records of a tuned file, keyed by (scenario, label); a ConfigError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tuned file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML error in tuned file {path}: {exc}") from exc
    records = {}
    for scenario, rows in raw.items():
        if not isinstance(rows, dict):
            raise ConfigError(f"{path}: {scenario!r} must be a table of rows ([scenario.label])")
        for label, record in rows.items():
            missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
            if missing:
                raise ConfigError(f"{path}: [{scenario}.{label}] lacks {', '.join(missing)}; "
                                  f"a tuned row has: {', '.join(REQUIRED)}")
            records[(scenario, label)] = record
    return records


def check_rows(records: dict[tuple[str, str], dict[str, Any]], rows, tuned_labels, suite_seeds, path) -> None:
    """Tuned rows must be suite rows, every row with a search space must be tuned, and the
    tuning seeds must not be evaluation seeds."""
    suite_rows = {(r.scenario, r.label) for r in rows}
    stray = sorted(set(records) - suite_rows)
    if stray:
        raise ConfigError(f"{path} tunes row(s) the suite does not run: {', '.join('/'.join(r) for r in stray)}; "
                          f"suite rows: {', '.join('/'.join(r) for r in sorted(suite_rows))}")
    untuned = sorted(r for r in suite_rows if r[1] in tuned_labels and r not in records)
    if untuned:
        raise ConfigError(f"{path} has no tuned values for row(s) with a search space: "
                          f"{', '.join('/'.join(r) for r in untuned)}; run `clbench tune` for them")
    for row, record in sorted(records.items()):
        overlap = sorted(set(record["seeds"]) & set(suite_seeds))
        if overlap:
            raise ConfigError(f"{path}: row {'/'.join(row)} was tuned on seed(s) {overlap}, which the suite also "
                              f"evaluates on (seeds {suite_seeds}); accepted: tuning seeds disjoint from them")
