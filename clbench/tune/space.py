"""Search spaces of `clbench tune`: the suite's `[tune.<label>]` tables as Optuna distributions.

    [tune.ewc]
    "strategy.ewc_lambda" = {log = [0.1, 1000]}     # log-uniform float
    lr = {grid = [0.01, 0.03, 0.1]}                 # one of these values
    epochs = {range = [1, 3]}                       # uniform; integers when both ends are

Keys are the keys of `--set` (strategy.*, train.* or the bare training keys,
model.*, optim.*, plugin.<name>.*); the values are checked against the config
by resolving a cell with each end of every range (clbench.tune.study).

A sub-table named after one of the suite's scenarios replaces or adds entries for that
scenario's study only, for a row whose scales differ between streams (SGD on one, Adam on
the other):

    [tune.naive]
    lr = {log = [0.003, 0.3]}
    [tune.naive.split_mnist]
    lr = {log = [0.0001, 0.01]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clbench.config import TrainConfig, field_types
from clbench.errors import ConfigError

KINDS = ("grid", "range", "log")
TUNABLE_PREFIXES = ("strategy.", "train.", "model.", "optim.", "plugin.")
_BARE_TRAIN_KEYS = tuple(field_types(TrainConfig))  # lr, epochs, ... as `--set` takes them


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Param:
    key: str  # a --set key, e.g. "strategy.ewc_lambda"
    kind: str  # grid | range | log
    values: tuple  # grid: the choices; range/log: (low, high)

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter (an enqueued trial gets its fixed value)."""
        if self.kind == "grid":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if _is_int(low) and _is_int(high):
            return trial.suggest_int(self.key, low, high, log=self.kind == "log")
        return trial.suggest_float(self.key, float(low), float(high), log=self.kind == "log")

    def corners(self) -> list[Any]:
        """Values that exercise the config's checks: every grid value, or both ends."""
        return list(self.values)

    def describe(self) -> str:
        return f"{self.key} = {{{self.kind} = {list(self.values)}}}"


def parse_space(label: str, table: Any, known_labels: list[str], scenario: str = "",
                scenarios: list[str] = ()) -> list[Param]:
    """The parameters of `[tune.<label>]` for `scenario` (its `[tune.<label>.<scenario>]`
    entries win), or a ConfigError naming the bad entry."""
    where = f"[tune.{label}]"
    if label not in known_labels:
        raise ConfigError(f"{where} names row {label!r}, which the suite does not run; its rows: "
                          f"{', '.join(known_labels)}")
    if isinstance(table, dict):
        if scenario and scenario in table:  # name the scenario only where its sub-table is involved
            where = f"[tune.{label}] ({scenario})"
        table = {k: v for k, v in table.items() if k not in scenarios} | dict(table.get(scenario) or {})
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where} is an empty search space; give at least one key, e.g. "
                          f"lr = {{grid = [0.01, 0.1]}}")
    params = []
    for key, spec in table.items():
        if not (key in _BARE_TRAIN_KEYS or key.startswith(TUNABLE_PREFIXES)):
            raise ConfigError(f"{where}: key {key!r} cannot be tuned; accepted: {', '.join(_BARE_TRAIN_KEYS)}, "
                              f"{', '.join(p + '<name>' for p in TUNABLE_PREFIXES)}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"{where}: {key} = {spec!r}; accepted: {{grid = [v, ...]}}, {{range = [low, high]}}, "
                              f"{{log = [low, high]}}")
        kind, values = next(iter(spec.items()))
        params.append(_check(where, key, kind, values))
    return params


def _check(where: str, key: str, kind: str, values: Any) -> Param:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {key} {kind} = {values!r}; accepted: a non-empty list")
    if kind == "grid":
        if any(isinstance(v, (dict, list)) for v in values) or len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{where}: {key} grid = {values!r}; accepted: distinct numbers, strings or booleans")
        return Param(key, kind, tuple(values))
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ConfigError(f"{where}: {key} {kind} = {values!r}; accepted: [low, high], two finite numbers")
    low, high = values
    if low > high:
        raise ConfigError(f"{where}: {key} {kind} = {values!r} has low > high; accepted: low <= high")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{where}: {key} log = {values!r} contains {low}; accepted: 0 < low <= high "
                          "(a log range cannot reach 0 or below)")
    return Param(key, kind, (low, high))


def grid_of(params: list[Param]) -> dict[str, list[Any]]:
    """Optuna's GridSampler search space; only `grid` parameters have one."""
    ranged = [p.key for p in params if p.kind != "grid"]
    if ranged:
        raise ConfigError(f"--sampler grid needs {{grid = [...]}} for every parameter; these are ranges: "
                          f"{', '.join(ranged)}; accepted: grid values, or --sampler tpe|random")
    return {p.key: list(p.values) for p in params}


def grid_size(params: list[Param]) -> int:
    return math.prod(len(p.values) for p in params)
