"""`clbench tune`: one Optuna study per tuned (scenario, label) row; each trial is a set of cells.

A trial's cells (one per tuning seed) run through the same engines as `bench`,
so a failing, NaN or timed-out cell fails its trial (TrialState.FAIL) and the
search goes on. The objective is the final average accuracy (ACC) on the
tuning split, averaged over the tuning seeds; for a lower-is-better metric
(bpc) the study maximises its negative. Studies live in
`sqlite:///RUN_DIR/study.db`: a killed run resumes, keeping finished trials
and re-running the params of the trial that was cut short.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.config import SuiteConfig, parse_set_args
from clbench.errors import ConfigError
from clbench.resolve import SuiteRow, resolve_config, suite_rows
from clbench.tune.space import Param, grid_of, parse_space

PROTOCOLS = ("validation", "first_k")
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "threshold", "none")


@dataclass
class TuneSettings:
    protocol: str
    seeds: list[int]
    trials: int
    k: int | None = None  # first_k only
    sampler: str = "tpe"
    pruner: str = "median"
    prune_below: float | None = None  # threshold pruner: prune a trial whose running ACC falls below
    val_fraction: float = 0.1
    cli_set: list[str] = field(default_factory=list)
    sampler_seed: int = 0  # the sampler's own RNG, so two tuning runs propose the same trials

    def validate(self, suite: SuiteConfig) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"bad --protocol {self.protocol!r}; accepted: {', '.join(PROTOCOLS)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"bad --sampler {self.sampler!r}; accepted: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"bad --pruner {self.pruner!r}; accepted: {', '.join(PRUNERS)}")
        if (self.pruner == "threshold") != (self.prune_below is not None):
            raise ConfigError("--prune-below goes with --pruner threshold, and --pruner threshold needs it")
        if self.trials < 1:
            raise ConfigError(f"bad --trials {self.trials}; accepted: an integer >= 1")
        if not 0 < self.val_fraction <= 0.5:
            raise ConfigError(f"bad --val-fraction {self.val_fraction}; accepted: 0 < val_fraction <= 0.5")
        if (self.protocol == "first_k") != (self.k is not None):
            raise ConfigError("--k goes with --protocol first_k (the number of experiences to tune on), "
                              "and --protocol first_k needs it")
        if not self.seeds or any(not 0 <= s < 2**32 for s in self.seeds):
            raise ConfigError(f"bad --seeds {self.seeds}; accepted: one or more integers from 0 to 2**32 - 1")
        overlap = sorted(set(self.seeds) & set(suite.seeds))
        if overlap:
            raise ConfigError(f"tuning seed(s) {overlap} are also evaluation seeds of suite {suite.name!r} "
                              f"({suite.seeds}); accepted: --seeds disjoint from them")

    def protocol_overrides(self) -> dict[str, Any]:
        """Trial cells never see test data: they are measured on the val split (docs/tuning.md)."""
        return {"scenario.val_fraction": self.val_fraction, "scenario.eval_split": "val"}

    def trial_record(self) -> dict[str, Any]:
        record = {"role": "trial", "protocol": self.protocol}
        return record | ({"first_k": self.k} if self.protocol == "first_k" else {})

    def setup(self, params: list[Param]) -> dict[str, Any]:
        """What a study was made with; resuming under a different setup is refused."""
        return {"protocol": self.protocol, "k": self.k, "seeds": self.seeds, "sampler": self.sampler,
                "pruner": self.pruner, "prune_below": self.prune_below, "val_fraction": self.val_fraction,
                "set": self.cli_set, "space": [p.describe() for p in params]}


@dataclass
class TunedRow:
    row: SuiteRow
    params: list[Param]


def plan(suite: SuiteConfig, settings: TuneSettings) -> list[TunedRow]:
    """Every tuned row, checked before anything runs or is written."""
    settings.validate(suite)
    if not suite.tune:
        raise ConfigError(f"suite {suite.name!r} has an empty search space: no [tune.<label>] table; e.g. "
                          "[tune.ewc] \"strategy.ewc_lambda\" = {log = [0.1, 1000]}")
    rows = suite_rows(suite)
    labels = list(dict.fromkeys(r.label for r in rows))
    for label in suite.tune:  # a table for a row the suite does not run: refused before any other check
        if label not in labels:
            parse_space(label, suite.tune[label], labels)
    tuned = [TunedRow(r, parse_space(r.label, suite.tune[r.label], labels, r.scenario, suite.scenarios))
             for r in rows if r.label in suite.tune]
    for t in tuned:
        if settings.sampler == "grid":
            grid_of(t.params)
        for p in t.params:  # each grid value and each end of a range must make a valid cell
            for value in p.corners():
                try:
                    cfg = trial_config(suite, t.row, settings, {p.key: value}, settings.seeds[0])
                except ConfigError as exc:
                    raise ConfigError(f"[tune.{t.row.label}] {p.key} on {t.row.scenario}: {exc}") from None
        n_exp = cfg.scenario_args.get("n_experiences")
        if settings.k is not None and not (1 <= settings.k and (n_exp is None or settings.k < n_exp)):
            raise ConfigError(f"bad --k {settings.k} for {t.row.scenario}/{t.row.label}: first_k needs "
                              f"1 <= k < T, and this stream has T = {n_exp} experiences")
    return tuned


def trial_config(suite: SuiteConfig, row: SuiteRow, settings: TuneSettings, values: dict[str, Any], seed: int):
    overrides = parse_set_args(settings.cli_set) | settings.protocol_overrides() | values
    cfg = resolve_config(row.scenario, row.strategy, seed=seed, profile=suite.profile, overrides=overrides,
                         layers=row.layers, label=row.label)
    cfg.tuning = settings.trial_record()
    return cfg


def params_key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def make_study(run_dir: Path, t: TunedRow, settings: TuneSettings):
    import optuna

    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=settings.sampler_seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=settings.sampler_seed),
        "grid": lambda: optuna.samplers.GridSampler(grid_of(t.params), seed=settings.sampler_seed),
    }
    pruners = {
        # Not before 4 trials have completed, and never on the first experience alone: a
        # regulariser (EWC's lambda, LwF's alpha) changes nothing until a second one is trained.
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        "threshold": lambda: optuna.pruners.ThresholdPruner(lower=settings.prune_below),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    study = optuna.create_study(
        storage=f"sqlite:///{run_dir.resolve() / 'study.db'}", study_name=f"{t.row.scenario}/{t.row.label}",
        load_if_exists=True, direction="maximize", sampler=samplers[settings.sampler](),
        pruner=pruners[settings.pruner](),
    )
    setup = settings.setup(t.params)
    if "setup" not in study.user_attrs:
        study.set_user_attr("setup", setup)
    elif study.user_attrs["setup"] != setup:
        old = study.user_attrs["setup"]
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in setup.items() if old.get(k) != v)
        raise ConfigError(f"{run_dir} holds study {study.study_name!r} made with other settings ({diff}); "
                          "use a new --out directory (nothing was changed)")
    return study


def recover_interrupted(study) -> None:
    """Trials left RUNNING by a killed run: FAIL them, keep them out of the budget, re-run their params."""
    from optuna.trial import TrialState

    interrupted = list(study.user_attrs.get("interrupted", []))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        interrupted.append(trial.number)
        study.set_user_attr("interrupted", interrupted)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)  # its finished cells are reused (same trial dir)


def budget_used(study) -> int:
    from optuna.trial import TrialState

    interrupted = set(study.user_attrs.get("interrupted", []))
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done) if t.number not in interrupted)
