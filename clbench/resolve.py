"""Turn (scenario, strategy, seed, profile, overrides) into a validated RunConfig.

Everything is checked here, before any data is loaded or any cell runs, so a
typo fails in a second instead of an hour into a suite.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from clbench.config import (
    RunConfig,
    SuiteConfig,
    apply_overrides,
    check_dataclass_args,
    parse_set_args,
    validate_train,
)
from clbench.errors import ConfigError
from clbench.registry import MODELS, OPTIMIZERS, PLUGINS, SCENARIOS, STRATEGIES
from clbench.stream_protocol import check_protocol


def _strategy_defaults(spec, scenario: str) -> dict[str, Any]:
    merged = dict(spec.defaults.get("*", {}))
    merged.update(spec.defaults.get(scenario, {}))
    return merged


_CONFIG_PREFIXES = ("train.", "model.", "optim.", "plugin.")


def _split_defaults(defaults: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Strategy defaults may set its params ('ewc_lambda') or config keys
    ('train.lr', 'model' for a strategy that needs its own architecture, 'model.<arg>')."""
    def is_config(key: str) -> bool:
        return key == "model" or key.startswith(_CONFIG_PREFIXES)

    params = {k: v for k, v in defaults.items() if not is_config(k)}
    config = {k: v for k, v in defaults.items() if is_config(k)}
    return params, config


def resolve_config(
    scenario: str,
    strategy: str,
    *,
    seed: int = 0,
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    layers: list[tuple[str, dict[str, Any]]] = (),
    label: str | None = None,
) -> RunConfig:
    """Resolve one cell. `layers` are (where, overrides) applied in order before `overrides`."""
    scenario_spec = SCENARIOS.get(scenario)
    strategy_spec = STRATEGIES.get(strategy)
    if scenario_spec.scenario_type not in strategy_spec.supports:
        raise ConfigError(
            f"strategy {strategy!r} does not support {scenario_spec.scenario_type} scenarios such as {scenario!r}; "
            f"it supports: {', '.join(strategy_spec.supports)}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"bad seed {seed!r}; must be an integer from 0 to 2**32 - 1 (numpy's seed range)")
    cfg = RunConfig(scenario=scenario, strategy=strategy, seed=seed, profile=profile)
    if profile not in scenario_spec.profiles:
        raise ConfigError(f"scenario {scenario!r} has no profile {profile!r}; accepted: {', '.join(scenario_spec.profiles)}")
    prof = scenario_spec.profiles[profile]
    apply_overrides(cfg, dict(prof.get("train", {})), where=f"{scenario} profile {profile}")
    cfg.scenario_args.update(prof.get("scenario", {}))
    params, train = _split_defaults(_strategy_defaults(strategy_spec, scenario))
    apply_overrides(cfg, train, where=f"{strategy} defaults")
    cfg.strategy_args.update(params)
    for where, layer in layers:
        apply_overrides(cfg, layer, where=where)
    apply_overrides(cfg, overrides or {}, where="--set")
    cfg.label = label or cfg.label or strategy
    if "__" in cfg.label or "/" in cfg.label:
        raise ConfigError(f"bad label {cfg.label!r}: it may not contain '__' or '/'")
    if cfg.model == "auto":
        cfg.model = scenario_spec.default_model
    check_model_args(cfg)
    validate_train(cfg)
    # stream_seed / val_fraction / eval_split apply to every stream (clbench/stream_protocol.py).
    protocol = check_protocol(cfg.scenario_args, scenario_spec.options, scenario)
    cfg.scenario_args = check_dataclass_args(cfg.scenario_args, scenario_spec.options, f"scenario {scenario!r}") | protocol
    if strategy_spec.params is None:
        if cfg.strategy_args:
            raise ConfigError(f"strategy {strategy!r} takes no parameters; got {', '.join(cfg.strategy_args)}")
    else:
        cfg.strategy_args = check_dataclass_args(cfg.strategy_args, strategy_spec.params, f"strategy {strategy!r}")
    check_plugins(cfg)
    optimizer_spec = OPTIMIZERS.get(cfg.train.optimizer)
    if optimizer_spec.params is None:
        if cfg.optimizer_args:
            raise ConfigError(f"optimizer {cfg.train.optimizer!r} takes no options; got {', '.join(cfg.optimizer_args)}")
    else:
        cfg.optimizer_args = check_dataclass_args(cfg.optimizer_args, optimizer_spec.params, f"optimizer {cfg.train.optimizer!r}")
    return cfg


def check_plugins(cfg: RunConfig) -> None:
    """Plugins must exist, appear once, and their options match their params dataclass."""
    duplicates = sorted({p for p in cfg.plugins if cfg.plugins.count(p) > 1})
    if duplicates:
        raise ConfigError(f"plugins listed twice: {', '.join(duplicates)}")
    stray = sorted(set(cfg.plugin_args) - set(cfg.plugins))
    if stray:
        raise ConfigError(f"options given for plugin(s) not in plugins: {', '.join(stray)}; plugins: {cfg.plugins}")
    for name in cfg.plugins:
        spec = PLUGINS.get(name)
        args = cfg.plugin_args.get(name, {})
        if spec.params is None:
            if args:
                raise ConfigError(f"plugin {name!r} takes no options; got {', '.join(args)}")
        else:
            cfg.plugin_args[name] = check_dataclass_args(args, spec.params, f"plugin {name!r}")


def check_model_args(cfg: RunConfig) -> None:
    """`model.<arg>` keys must be keyword arguments of the model factory (after info and profile)."""
    spec = MODELS.get(cfg.model)  # raises with the valid names
    accepted = list(inspect.signature(spec.factory).parameters)[2:]
    unknown = sorted(set(cfg.model_args) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown argument(s) {', '.join(unknown)} for model {cfg.model!r}; valid: {', '.join(accepted) or '(none)'}")
    if spec.validate is not None:
        try:
            spec.validate(**cfg.model_args)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {cfg.model!r}: {exc}") from None


def expand_suite(suite: SuiteConfig, cli_set: list[str] | None = None, skipped: list[str] | None = None,
                 tuned: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[RunConfig]:
    """Every cell of a suite: scenarios x (strategies + variants) x seeds; a variant with
    `scenarios` runs on those only (e.g. encoder rows on the intent streams).

    With `skip_unsupported`, incompatible (scenario, strategy) pairs are left
    out and described in `skipped` instead of raising. `tuned` maps (scenario,
    label) to a `clbench tune` record (clbench.tune.tuned_file): its values are
    applied after the variant's overrides and before `--set`, and the record is
    stored in the cell's config.
    """
    cli_overrides = parse_set_args(cli_set or [])
    cells = []
    for row in suite_rows(suite, skipped):
        record = (tuned or {}).get((row.scenario, row.tuned_as or row.label))
        values = record["values"] if record else {}
        if row.tuned_as:  # a sweep point: its arm's tuned values, but its own knob
            values = {k: v for k, v in values.items() if k not in row.own_keys}
        layers = row.layers + ([("tuned values", values)] if record else [])
        for seed in row.seeds or suite.seeds:
            cfg = resolve_config(row.scenario, row.strategy, seed=seed, profile=suite.profile,
                                 overrides=cli_overrides, layers=layers, label=row.label)
            if row.tuned_as:  # recorded even untuned: the report draws the arm's sweep curve from it
                cfg.tuning = {"role": "borrowed", "from": row.tuned_as, "values": values}
            elif record:
                cfg.tuning = {"role": "tuned", **record}
            cells.append(cfg)
    return cells


@dataclass
class SuiteRow:
    """One (scenario, label) row of a suite, with the override layers its cells get."""

    scenario: str
    label: str
    strategy: str
    layers: list[tuple[str, dict[str, Any]]]
    seeds: list[int] = field(default_factory=list)  # empty: the suite's
    tuned_as: str = ""  # the row whose tuned values it takes (a sweep point)
    own_keys: frozenset[str] = frozenset()  # the keys its variant sets


def suite_rows(suite: SuiteConfig, skipped: list[str] | None = None) -> list[SuiteRow]:
    """The rows of a suite in table order (see expand_suite), after checking labels and scenarios."""
    entries = [(name, name, {}) for name in suite.strategies]
    entries += [(v.label, v.strategy, v.set) for v in suite.variants]
    by_label = {v.label: v for v in suite.variants}
    _check_variant_seeds_and_tuning(suite, [label for label, _, _ in entries])
    only = {v.label: set(v.scenarios) for v in suite.variants if v.scenarios}  # label -> its scenarios
    for label, names in only.items():
        if names - set(suite.scenarios):
            raise ConfigError(
                f"suite {suite.name!r}: variant {label!r} names scenarios the suite does not run: "
                f"{', '.join(sorted(names - set(suite.scenarios)))}; the suite runs {', '.join(suite.scenarios)}"
            )
    labels = [label for label, _, _ in entries]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ConfigError(f"suite {suite.name!r} uses these labels twice: {', '.join(duplicates)}")
    unknown = sorted(set(suite.scenario_args) - set(suite.scenarios))
    if unknown:
        raise ConfigError(f"suite {suite.name!r} has scenario_args for scenarios it does not run: {', '.join(unknown)}")
    rows = []
    for scenario in suite.scenarios:
        for label, strategy, variant_set in entries:
            if label in only and scenario not in only[label]:
                continue
            scenario_type = SCENARIOS.get(scenario).scenario_type
            if suite.skip_unsupported and scenario_type not in STRATEGIES.get(strategy).supports:
                if skipped is not None:
                    skipped.append(f"{scenario}/{label}: {strategy} does not support {scenario_type}")
                continue
            layers = [("suite set", suite.set)]
            layers.append(("suite scenario_args", {f"scenario.{k}": v for k, v in suite.scenario_args.get(scenario, {}).items()}))
            layers.append(("suite strategy_args", {f"strategy.{k}": v for k, v in suite.strategy_args.get(strategy, {}).items()}))
            layers.append((f"variant {label}", variant_set))
            v = by_label.get(label)
            rows.append(SuiteRow(scenario, label, strategy, layers, seeds=list(v.seeds) if v else [],
                                 tuned_as=v.tuned_as if v else "", own_keys=frozenset(variant_set)))
    return rows


def _check_variant_seeds_and_tuning(suite: SuiteConfig, labels: list[str]) -> None:
    """A variant's seeds are some of the suite's (its cells stay paired with the others'), and
    `tuned_as` names another row that is tuned itself, not a sweep point or a row with its own
    search space."""
    for v in suite.variants:
        stray = sorted(set(v.seeds) - set(suite.seeds))
        if stray:
            raise ConfigError(f"suite {suite.name!r}: variant {v.label!r} has seeds {stray} the suite does not run; "
                              f"accepted: some of the suite's seeds {suite.seeds}")
        if not v.tuned_as:
            continue
        borrowed = next((w for w in suite.variants if w.label == v.tuned_as), None)
        if v.tuned_as not in labels or v.tuned_as == v.label or (borrowed and borrowed.tuned_as):
            accepted = [x for x in labels if x != v.label and not any(w.label == x and w.tuned_as for w in suite.variants)]
            raise ConfigError(f"suite {suite.name!r}: variant {v.label!r} has tuned_as {v.tuned_as!r}; "
                              f"accepted: another row's label ({', '.join(accepted)})")
        if v.label in suite.tune:
            raise ConfigError(f"suite {suite.name!r}: variant {v.label!r} takes {v.tuned_as!r}'s tuned values "
                              "and has a search space of its own; drop one")
