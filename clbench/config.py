"""Run and suite configuration: plain dataclasses loaded from TOML.

A cell's config is resolved in layers, each overriding the previous one:

1. the scenario's profile defaults (data size and training settings),
2. the strategy's per-scenario defaults (published hyper-parameters),
3. the suite file,
4. `--set key=value` on the command line.

The fully resolved `RunConfig` is stored with every result, and its hash
(without the seed) identifies the cell's configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from clbench.errors import ConfigError

PROFILES = ("smoke", "quick", "full")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class TrainConfig:
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    train_mb_size: int = 128
    eval_mb_size: int = 1024
    # bf16 autocast of the training forward pass, CUDA only (clbench.cifar_train.AmpPlugin).
    amp: bool = False
    # Anytime evaluation (clbench.anytime, docs/stability_gap.md): every `eval_every` training
    # iterations, the accuracy on a fixed `eval_subset` test samples of every seen experience.
    # 0 = off (results then carry no curve and keep the hashes they had before it existed).
    eval_every: int = 0
    eval_subset: int = 100


@dataclass
class RunConfig:
    scenario: str
    strategy: str
    seed: int = 0
    profile: str = "quick"
    label: str = ""  # row name in reports; defaults to the strategy name
    model: str = "auto"  # "auto" picks the scenario's standard model
    device: str = "cpu"
    plugins: list[str] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    scenario_args: dict[str, Any] = field(default_factory=dict)
    strategy_args: dict[str, Any] = field(default_factory=dict)
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model factory
    plugin_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per plugin name
    # How this cell relates to `clbench tune` (docs/tuning.md): empty for an untuned cell; a trial
    # cell's protocol (and `first_k`, which truncates the stream), or a tuned cell's record.
    tuning: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """Hash of everything but the seed: cells differing only by seed share it."""
        d = self.to_dict()
        d.pop("seed")
        if not d["tuning"]:
            d.pop("tuning")  # untuned cells keep the hashes they had before tuning existed
        if not d["train"]["amp"]:
            d["train"].pop("amp")  # likewise cells from before train.amp existed
        if not d["train"]["eval_every"]:
            d["train"].pop("eval_every")  # and from before anytime evaluation existed
            d["train"].pop("eval_subset")
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        d["train"] = TrainConfig(**d.get("train", {}))
        return RunConfig(**d)


# --------------------------------------------------------------------------- value coercion
def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert `value` to the field type `annotation`, or raise a ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"bad value for {key}: {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"bad value for {key}: {value!r}; accepted: {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value for {key}: {value!r} is not a list (write it as [a, b])")
        (inner,) = typing.get_args(annotation)[:1] or (Any,)
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"bad value for {key}: {value!r} is not a table")
        (inner,) = typing.get_args(annotation)[1:] or (Any,)
        return {k: coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for {key}: {value!r} is not a boolean (true or false)")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"bad value for {key}: {value!r} is not an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"bad value for {key}: {value!r} is not a number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"bad value for {key}: {value!r} is not a finite number")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"bad value for {key}: {value!r} is not a string")
        return value
    return value


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_set_value(text: str) -> Any:
    """Parse the value of `--set key=value` as a TOML value; bare words are strings,
    also inside a list (`plugins=[cms_multirate]` is `["cms_multirate"]`)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        quoted = re.sub(r"(?<![\w.\"'])([A-Za-z_][\w\-]*)(?![\w\"'])", r'"\1"', text)
        try:
            return tomllib.loads(f"v = {quoted}")["v"]
        except tomllib.TOMLDecodeError:
            pass
    return text


def parse_set_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"bad --set {pair!r}: expected key=value, e.g. --set lr=0.05")
        key, text = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"bad --set {pair!r}: empty key")
        out[key] = parse_set_value(text.strip())
    return out


TOP_LEVEL_KEYS = ("label", "model", "device", "plugins")


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], *, where: str = "--set") -> None:
    """Apply flat `key=value` overrides in place.

    Keys: `label`, `model`, `device`, `plugins`, any TrainConfig field (bare or
    as `train.<field>`), `scenario.<option>`, `strategy.<param>` and
    `optim.<option>` and `model.<arg>`. Scenario, strategy, optimizer and model keys are checked against their declared dataclasses later, in
    `resolve` (they depend on which scenario and strategy are chosen).
    """
    train_types = field_types(TrainConfig)
    run_types = field_types(RunConfig)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name and key in TOP_LEVEL_KEYS:
            setattr(cfg, key, coerce(value, run_types[key], f"{where} {key}"))
        elif (not name and key in train_types) or (section == "train" and name in train_types):
            field_name = name or key
            setattr(cfg.train, field_name, coerce(value, train_types[field_name], f"{where} {key}"))
        elif section == "scenario" and name:
            cfg.scenario_args[name] = value
        elif section == "strategy" and name:
            cfg.strategy_args[name] = value
        elif section == "optim" and name:
            cfg.optimizer_args[name] = value
        elif section == "model" and name:
            cfg.model_args[name] = value
        elif section == "plugin" and name.count(".") == 1:
            plugin, option = name.split(".")
            cfg.plugin_args.setdefault(plugin, {})[option] = value
        else:
            valid = list(TOP_LEVEL_KEYS) + sorted(train_types) + ["train.<field>", "scenario.<option>", "strategy.<param>", "optim.<option>", "model.<arg>", "plugin.<name>.<option>"]
            raise ConfigError(f"unknown config key {key!r} in {where}; valid keys: {', '.join(valid)}")


def validate_train(cfg: RunConfig) -> None:
    t = cfg.train
    for name in ("epochs", "train_mb_size", "eval_mb_size"):
        if getattr(t, name) < 1:
            raise ConfigError(f"bad value for {name}: {getattr(t, name)}; must be a positive integer")
    if t.eval_every < 0 or t.eval_subset < 1:
        raise ConfigError(f"bad anytime evaluation: eval_every={t.eval_every}, eval_subset={t.eval_subset}; "
                          "eval_every must be >= 0 iterations (0 = off) and eval_subset >= 1 samples")
    if t.lr < 0 or t.momentum < 0 or t.weight_decay < 0:
        raise ConfigError(f"bad training values: lr={t.lr}, momentum={t.momentum}, weight_decay={t.weight_decay}; must be >= 0")
    if cfg.profile not in PROFILES:
        raise ConfigError(f"bad profile {cfg.profile!r}; accepted: {', '.join(PROFILES)}")
    if cfg.device not in DEVICES and not re.fullmatch(r"cuda:\d+", cfg.device):
        raise ConfigError(f"bad device {cfg.device!r}; accepted: cpu, cuda, cuda:N, auto")


def check_dataclass_args(args: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """Validate a dict of options against dataclass `cls`; returns the full, coerced dict."""
    types_ = field_types(cls)
    unknown = sorted(set(args) - set(types_))
    if unknown:
        raise ConfigError(f"unknown {where} option(s) {', '.join(unknown)}; valid: {', '.join(sorted(types_)) or '(none)'}")
    coerced = {k: coerce(v, types_[k], f"{where}.{k}") for k, v in args.items()}
    try:
        obj = cls(**coerced)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad {where} options {coerced}: {exc}") from exc
    return asdict(obj)


# --------------------------------------------------------------------------- suites
@dataclass
class Variant:
    """A labelled strategy plus overrides, e.g. EWC on a CMS model."""

    label: str
    strategy: str
    set: dict[str, Any] = field(default_factory=dict)
    scenarios: list[str] = field(default_factory=list)  # the suite scenarios it runs on; empty = all
    seeds: list[int] = field(default_factory=list)  # a subset of the suite's seeds; empty = all
    # Take the tuned values of this row (same scenario) instead of its own, except the keys
    # this variant sets: the points of a stability-plasticity sweep share their arm's tuning.
    tuned_as: str = ""


VARIANT_KEYS = ("label", "strategy", "set", "scenarios", "seeds", "tuned_as")


@dataclass
class SuiteConfig:
    name: str
    scenarios: list[str]
    strategies: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    profile: str = "quick"
    set: dict[str, Any] = field(default_factory=dict)  # global overrides (same keys as --set)
    scenario_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    strategy_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: list[Variant] = field(default_factory=list)
    # Search spaces of `clbench tune`, per row label: {label: {config key: {grid|range|log = ...}}}
    tune: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugin_files: list[str] = field(default_factory=list)
    # Skip (and list) strategy x scenario pairs the strategy does not support,
    # instead of refusing the whole suite.
    skip_unsupported: bool = False
    # Trackers for every cell (`--log`, docs/tracking.md); `--log` on the command line replaces them.
    log: list[str] = field(default_factory=list)


SUITE_KEYS = {f.name for f in dataclasses.fields(SuiteConfig)}


def read_toml_table(path: str | Path, kind: str, valid_keys) -> dict[str, Any]:
    """Read a TOML file, naming the line of a syntax error and any unknown top-level key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib ends its message with "(at line L, column C)", or with
        # "(at end of document)" for an unterminated value: name that line too.
        message = str(exc).replace("(at end of document)", f"(at end of document, line {text.count(chr(10)) or 1})")
        raise ConfigError(f"TOML error in {kind} file {path}: {message}") from exc
    unknown = sorted(set(raw) - set(valid_keys))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {path}; valid: {', '.join(sorted(valid_keys))}")
    return raw


def load_suite(path: str | Path) -> SuiteConfig:
    path = Path(path)
    raw = read_toml_table(path, "suite", SUITE_KEYS)
    raw.setdefault("name", path.stem)
    for required in ("scenarios",):
        if required not in raw:
            raise ConfigError(f"suite file {path} has no {required!r} list")
    raw.setdefault("strategies", [])
    types_ = field_types(SuiteConfig)
    values = {}
    for key, value in raw.items():
        if key == "variants":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{path}: 'variants' must be an array of tables ([[variants]])")
            variants = []
            for i, v in enumerate(value):
                extra = sorted(set(v) - set(VARIANT_KEYS))
                if extra or "strategy" not in v:
                    raise ConfigError(
                        f"{path}: variants[{i}] needs 'strategy' (and optional "
                        f"{', '.join(repr(k) for k in VARIANT_KEYS if k != 'strategy')}); got keys {sorted(v)}"
                    )
                if not (isinstance(v["strategy"], str) and isinstance(v.get("label", ""), str)
                        and isinstance(v.get("set", {}), dict)):
                    raise ConfigError(f"{path}: variants[{i}]: 'strategy' and 'label' must be strings and 'set' a table; got {v!r}")
                only = v.get("scenarios", [])
                if not isinstance(only, list) or not all(isinstance(x, str) for x in only):
                    raise ConfigError(f"{path}: variants[{i}].scenarios must be a list of scenario names; got {only!r}")
                seeds = v.get("seeds", [])
                if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
                    raise ConfigError(f"{path}: variants[{i}].seeds must be a list of integer seeds; got {seeds!r}")
                if not isinstance(v.get("tuned_as", ""), str):
                    raise ConfigError(f"{path}: variants[{i}].tuned_as must be a row label; got {v['tuned_as']!r}")
                variants.append(Variant(label=str(v.get("label", v["strategy"])), strategy=v["strategy"],
                                        set=dict(v.get("set", {})), scenarios=list(only), seeds=list(seeds),
                                        tuned_as=v.get("tuned_as", "")))
            values[key] = variants
        else:
            values[key] = coerce(value, types_[key], f"{path.name}: {key}")
    suite = SuiteConfig(**values)
    from clbench.tracking import parse_log

    suite.log = list(parse_log(suite.log, f"{path.name}: log"))
    if suite.profile not in PROFILES:
        raise ConfigError(f"{path}: bad profile {suite.profile!r}; accepted: {', '.join(PROFILES)}")
    if not suite.strategies and not suite.variants:
        raise ConfigError(f"suite file {path} lists no strategies and no variants")
    base = path.parent
    suite.plugin_files = [str((base / p).resolve()) if not Path(p).is_absolute() else p for p in suite.plugin_files]
    return suite
