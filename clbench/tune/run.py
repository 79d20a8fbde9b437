"""Run the trials of each tuned row and collect the chosen values (the loop behind `clbench tune`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.config import SuiteConfig
from clbench.engines import EngineOptions
from clbench.metrics import as_matrix, final_average
from clbench.store import read_result, result_path
from clbench.tune.study import (
    TunedRow,
    TuneSettings,
    budget_used,
    make_study,
    params_key,
    recover_interrupted,
    trial_config,
)


@dataclass
class EngineArgs:
    """What `run_suite` needs besides the cells (the same as `clbench bench`)."""

    options: EngineOptions
    data_root: Any = None
    download: bool | None = None
    plugin_files: list[str] = field(default_factory=list)
    progress: bool = True


def row_dir(run_dir: Path, t: TunedRow) -> Path:
    return run_dir / "trials" / f"{t.row.scenario}__{t.row.label}"


def tune_row(suite: SuiteConfig, t: TunedRow, settings: TuneSettings, run_dir: Path, engine: EngineArgs):
    """Run trials until this row's budget is spent (or its grid exhausted); returns the study."""
    import optuna

    study = make_study(run_dir, t, settings)
    recover_interrupted(study)
    limit = settings.trials
    if settings.sampler == "grid":
        from clbench.tune.space import grid_size

        limit = min(limit, grid_size(t.params))  # every point once; the record says how many ran
    if not engine.progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    while budget_used(study) < limit:  # one trial at a time: a killed run loses at most one
        study.optimize(lambda trial: run_trial(suite, t, settings, run_dir, engine, trial), n_trials=1,
                       catch=(TrialFailed,))
    return study


class TrialFailed(Exception):
    """A trial cell failed (exception, NaN loss, timeout, dead worker): Optuna stores the trial as FAIL."""


def run_trial(suite, t: TunedRow, settings: TuneSettings, run_dir: Path, engine: EngineArgs, trial) -> float:
    """The objective: run the trial's cells, return the signed mean final ACC (maximised)."""
    import optuna

    from clbench.suite import run_suite

    values = {p.key: p.suggest(trial) for p in t.params}
    cells = [trial_config(suite, t.row, settings, values, seed) for seed in settings.seeds]
    seed_index = {seed: i for i, seed in enumerate(settings.seeds)}
    pruned = []

    def on_row(task, progress) -> bool:
        """Step i*T + e: tuning seed i after experience e, so trials compare at equal steps."""
        if pruned:
            return False
        row, e = progress["row"], progress["experience"]
        acc = sum(row[: e + 1]) / (e + 1)  # ACC over the experiences seen so far
        trial.report(acc if progress["higher_is_better"] else -acc, seed_index[task.cfg.seed] * len(row) + e)
        if trial.should_prune():
            pruned.append(e)
            return False
        return True

    trial_dir = row_dir(run_dir, t) / params_key(values)
    trial.set_user_attr("trial_dir", str(trial_dir.relative_to(run_dir)))
    outcome = run_suite(cells, trial_dir, resume=True, data_root=engine.data_root, download=engine.download,
                        plugin_files=engine.plugin_files, progress=engine.progress,
                        suite_name=f"{t.row.scenario}/{t.row.label} trial {trial.number}", options=engine.options,
                        on_row=on_row)
    if pruned:
        raise optuna.TrialPruned(f"pruned after experience {pruned[0]}")
    if outcome.failed:
        trial.set_user_attr("error", outcome.failed[0][1][:300])
        raise TrialFailed(outcome.failed[0][1][:300])
    results = [read_result(result_path(trial_dir, cid)) for cid in _ids(cells)]
    metric = sum(final_average(as_matrix(r["matrix"])) for r in results) / len(results)
    if not math.isfinite(metric):
        trial.set_user_attr("error", f"non-finite objective {metric}")
        raise TrialFailed(f"non-finite objective {metric}")
    higher = bool(results[0].get("higher_is_better", True))
    trial.set_user_attr("metric", results[0].get("metric_name", "accuracy"))
    trial.set_user_attr("metric_value", metric)
    return metric if higher else -metric


def _ids(cells) -> list[str]:
    from clbench.suite import cell_ids

    return cell_ids(cells)


def cpu_seconds(run_dir: Path, t: TunedRow) -> float:
    """CPU time of every trial cell this row ran (each result.json once, pruned and failed included)."""
    total = 0.0
    for path in row_dir(run_dir, t).glob("*/cells/*/result.json"):
        result = read_result(path) or {}
        total += float(result.get("cpu_seconds") or 0.0)
    return total


def tuned_record(study, t: TunedRow, settings: TuneSettings, run_dir: Path) -> dict[str, Any] | None:
    """The row's tuned.toml record, or None when no trial completed."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = max(complete, key=lambda trial: trial.value)
    interrupted = set(study.user_attrs.get("interrupted", []))
    states = [trial.state for trial in study.get_trials(deepcopy=False) if trial.number not in interrupted]
    record: dict[str, Any] = {"values": dict(best.params), "protocol": settings.protocol}
    if settings.k is not None:
        record["k"] = settings.k
    record |= {
        "trials": budget_used(study), "completed": len(complete), "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL), "interrupted": len(interrupted), "seeds": list(settings.seeds), "sampler": settings.sampler,
        "pruner": settings.pruner, "val_fraction": settings.val_fraction,
        "metric": best.user_attrs.get("metric", "accuracy"), "objective": best.user_attrs.get("metric_value"),
        "cpu_seconds": round(cpu_seconds(run_dir, t), 2),
    }
    return record
