"""Read and validate a run directory (`RUN_DIR/cells/<cell_id>/result.json`).

Reports must cover whatever is valid and say clearly what was left out, so every
problem becomes a `Skipped` entry with a one-line reason instead of an exception:
half-written or invalid JSON, missing keys, an unknown schema version, a mix of
configs under one (scenario, label), duplicate seeds, or a scenario whose cells
disagree on the metric. Failed cells (`status: failed`) are kept apart with their
error. Only a run directory that does not exist raises.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 2 added the optional `anytime` curve; nothing else changed
RESULT_FILE = "result.json"

# Keys the report needs from an `ok` cell, with the type each must have.
REQUIRED_STR = ("cell_id", "scenario", "strategy", "label", "config_hash", "metric_name")
REQUIRED_NUMBER = ("train_seconds", "eval_seconds", "wall_seconds", "peak_rss_mb", "num_params")
REQUIRED_OTHER = ("seed", "higher_is_better", "n_experiences", "matrix", "initial")
REQUIRED_KEYS = REQUIRED_STR + REQUIRED_NUMBER + REQUIRED_OTHER


@dataclass(frozen=True)
class Skipped:
    """A result that is not used, and why. `path` is relative to the run dir."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class FailedCell:
    """A cell whose run failed (`status: failed`); listed, never used in metrics."""

    path: str
    cell_id: str
    scenario: str
    label: str
    seed: Any
    error: str

    def __str__(self) -> str:
        return f"{self.cell_id} ({self.scenario}/{self.label}, seed {self.seed}): {self.error}"


@dataclass
class LoadedRun:
    """The usable cells of one run plus everything that was left out."""

    run_dir: Path
    cells: list[dict[str, Any]] = field(default_factory=list)
    failed: list[FailedCell] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    n_found: int = 0  # cell folders seen, valid or not

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    def why_empty(self) -> str:
        """A message for a run with no usable cells, naming the directory."""
        where = f"no valid results in {self.run_dir}"
        if self.n_found == 0:
            return (
                f"{where}: expected {self.run_dir}/cells/<cell_id>/{RESULT_FILE} files, found none"
            )
        parts = [f"{self.n_found} cell folder(s) found", f"{len(self.failed)} failed"]
        parts.append(f"{len(self.skipped)} skipped")
        first = (self.skipped or self.failed)[:3]
        detail = "; ".join(str(x) for x in first)
        return f"{where}: {', '.join(parts)}" + (f" (e.g. {detail})" if detail else "")


def load_run(run_dir: str | Path) -> LoadedRun:
    """Read every cell of `run_dir`; raise ClbenchError only if the directory is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ClbenchError(f"run directory not found: {run_dir}")
    cells_dir = run_dir / "cells"
    entries = []
    if cells_dir.is_dir():
        for cell_dir in sorted(p for p in cells_dir.iterdir() if p.is_dir()):
            data, reason = _read_cell(cell_dir / RESULT_FILE)
            entries.append((f"cells/{cell_dir.name}/{RESULT_FILE}", data, reason))
    return _collect(LoadedRun(run_dir=run_dir), entries)


IN_MEMORY = Path("<results>")


def load_results(results: Iterable[Any]) -> LoadedRun:
    """Result dicts already in memory (e.g. the runner's), checked exactly like files.

    Entries are named `results[k]`; the returned run's `run_dir` is `IN_MEMORY`.
    """
    entries = []
    for k, data in enumerate(results):
        reason = validate_result(data)
        entries.append((f"results[{k}]", None if reason else dict(data), reason))
    return _collect(LoadedRun(run_dir=IN_MEMORY), entries)


def _collect(run: LoadedRun, entries: list[tuple[str, dict | None, str]]) -> LoadedRun:
    """Sort (where, data, reason) entries into cells, failed and skipped."""
    candidates = []
    for where, data, reason in entries:
        run.n_found += 1
        if reason:
            run.skipped.append(Skipped(where, reason))
        elif data["status"] == "failed":
            run.failed.append(_failed_cell(where, data))
        else:
            candidates.append((where, data))
    kept, skipped = resolve_conflicts(candidates)
    run.cells = [data for _, data in kept]
    for where, data in kept:
        data["_path"] = where  # where it came from, for messages
    run.skipped.extend(skipped)
    return run


def _read_cell(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The parsed result and "" if usable, else (None, reason)."""
    if not path.is_file():
        return None, f"no {RESULT_FILE} (cell unfinished or interrupted)"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable: {exc}"
    except ValueError as exc:
        return None, f"invalid JSON (half-written?): {exc}"
    reason = validate_result(data)
    return (None, reason) if reason else (data, "")


def validate_result(data: Any) -> str:
    """ "" when `data` is a usable result dict (schema version 1 or 2), else the reason."""
    if not isinstance(data, dict):
        return f"not a JSON object (got {type(data).__name__})"
    version = data.get("schema_version")
    if version is None:
        return "no schema_version: not a clbench result.json"
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        return f"unknown schema version {version!r} (this clbench reads versions {readable})"
    status = data.get("status")
    if status == "failed":
        return ""
    if status != "ok":
        return f"unknown status {status!r} (expected 'ok' or 'failed')"
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        return f"missing required key(s) {', '.join(missing)} (half-written or older writer?)"
    return _type_problem(data)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_problem(data: dict[str, Any]) -> str:
    for key in REQUIRED_STR:
        if not isinstance(data[key], str) or not data[key]:
            return f"{key} must be a non-empty string, got {data[key]!r}"
    for key in REQUIRED_NUMBER:
        if not _is_number(data[key]):
            return f"{key} must be a number, got {data[key]!r}"
    if not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
        return f"seed must be an integer, got {data['seed']!r}"
    if not isinstance(data["higher_is_better"], bool):
        return f"higher_is_better must be true or false, got {data['higher_is_better']!r}"
    T = data["n_experiences"]
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        return f"n_experiences must be a positive integer, got {T!r}"
    matrix, initial = data["matrix"], data["initial"]
    if not isinstance(matrix, list) or len(matrix) != T:
        n = len(matrix) if isinstance(matrix, list) else "no"
        return f"matrix has {n} rows, expected n_experiences = {T}"
    for i, row in enumerate(matrix):
        if not _is_vector(row, T):
            return f"matrix row {i} is not a list of {T} numbers"
    if not _is_vector(initial, T):
        return f"initial is not a list of {T} numbers"
    return _anytime_problem(data.get("anytime"), T)


def _anytime_problem(curve: Any, T: int) -> str:
    """The optional anytime curve (schema 2): parallel lists, one value per task per point."""
    if curve is None:
        return ""
    if not isinstance(curve, dict):
        return f"anytime must be an object, got {type(curve).__name__}"
    keys = ("iteration", "experience", "values", "boundaries")
    if any(not isinstance(curve.get(k), list) for k in keys):
        return f"anytime needs the lists {', '.join(keys)}"
    n = len(curve["iteration"])
    if len(curve["experience"]) != n or len(curve["values"]) != n:
        return f"anytime lists differ in length ({n} iterations, {len(curve['experience'])} experiences, {len(curve['values'])} values)"
    for k, row in enumerate(curve["values"]):
        if not _is_vector(row, T):
            return f"anytime values[{k}] is not a list of {T} numbers"
    return ""


def _is_vector(values: Any, length: int) -> bool:
    """A list of `length` numbers (null and NaN allowed: they propagate as NaN)."""
    return (
        isinstance(values, list)
        and len(values) == length
        and all(v is None or _is_number(v) for v in values)
    )


def _failed_cell(rel: str, data: dict[str, Any]) -> FailedCell:
    return FailedCell(
        path=rel,
        cell_id=str(data.get("cell_id") or rel.split("/")[1]),
        scenario=str(data.get("scenario", "?")),
        label=str(data.get("label") or data.get("strategy", "?")),
        seed=data.get("seed", "?"),
        error=str(data.get("error") or "no error message recorded"),
    )


# --------------------------------------------------------------------------- conflicts
def resolve_conflicts(
    cells: list[tuple[str, dict]],
) -> tuple[list[tuple[str, dict]], list[Skipped]]:
    """Keep one consistent set of cells per (scenario, label) and per scenario.

    Rules, each keeping the majority and skipping the rest with a reason:
    1. one config_hash per (scenario, label): another hash is "a mix of configs
       for the same strategy name" and averaging it would mix two experiments;
    2. one cell per seed within that group;
    3. one (metric_name, higher_is_better, n_experiences) per scenario, so that a
       table has one unit and matrices of one size can be compared.
    """
    skipped: list[Skipped] = []
    by_group: dict[tuple[str, str], list[tuple[str, dict]]] = defaultdict(list)
    for rel, data in cells:
        by_group[(data["scenario"], data["label"])].append((rel, data))
    kept = []
    for (scenario, label), members in by_group.items():
        members = _keep_majority(
            members,
            key=lambda d: d["config_hash"],
            why=lambda k, n, k2, n2, s=scenario, lab=label: (
                f"mix of configs for the same strategy name: {s}/{lab} has config_hash "
                f"{k2} ({n2} cell(s)) and {k} ({n} cell(s)); kept {k}. "
                f"Give one of them its own label to report both"
            ),
            skipped=skipped,
        )
        seen_seeds: set[int] = set()
        for rel, data in members:
            if data["seed"] in seen_seeds:
                skipped.append(
                    Skipped(rel, f"duplicate seed {data['seed']} for {scenario}/{label}")
                )
            else:
                seen_seeds.add(data["seed"])
                kept.append((rel, data))
    by_scenario: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for rel, data in kept:
        by_scenario[data["scenario"]].append((rel, data))
    final = []
    for scenario, members in by_scenario.items():
        final += _keep_majority(
            members,
            key=_metric_key,
            why=lambda k, n, k2, n2, s=scenario: (
                f"scenario {s} mixes metrics: this cell has {_describe(k2)}, "
                f"{n} other cell(s) have {_describe(k)}; kept those"
            ),
            skipped=skipped,
        )
    final.sort(key=lambda item: item[0])
    return final, skipped


def _metric_key(data: dict[str, Any]) -> tuple[str, bool, int]:
    return (data["metric_name"], data["higher_is_better"], data["n_experiences"])


def _describe(key: tuple[str, bool, int]) -> str:
    name, hib, T = key
    return f"{name} ({'higher' if hib else 'lower'} is better, T={T})"


def _keep_majority(members, key, why, skipped):
    """Members whose key is the most common one (ties: smallest key); skip the rest."""
    counts = Counter(key(data) for _, data in members)
    if len(counts) == 1:
        return members
    winner = min(counts, key=lambda k: (-counts[k], str(k)))
    kept = []
    for rel, data in members:
        k = key(data)
        if k == winner:
            kept.append((rel, data))
        else:
            skipped.append(Skipped(rel, why(winner, counts[winner], k, counts[k])))
    return kept
