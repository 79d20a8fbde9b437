"""Name -> component registries for strategies, scenarios and models.

Built-in components register themselves with a decorator when their package is
imported. Third-party packages plug in through the entry-point groups
`clbench.strategies`, `clbench.scenarios`, `clbench.models`, `clbench.plugins` and
`clbench.optimizers` (the entry point
names a module or object; importing it runs the decorators). A strategy file
that is not installed is loaded with `load_plugin_file` (`--plugin path.py`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from clbench.errors import ClbenchError, UnknownNameError

# The three settings of van de Ven et al. ("Three types of incremental learning").
SCENARIO_TYPES = ("class_il", "task_il", "domain_il")


@dataclass(frozen=True)
class StrategySpec:
    name: str
    factory: Callable[..., Any]  # factory(ctx: StrategyContext) -> SupervisedTemplate
    description: str
    supports: tuple[str, ...]
    params: type | None  # dataclass of the strategy's hyper-parameters
    # Per-scenario defaults: {scenario_name: {param_or_train_key: value}}; "*" applies to all.
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    origin: str = "builtin"


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    builder: Callable[..., Any]  # builder(options, profile, seed, data_root, download) -> TensorStream
    description: str
    scenario_type: str
    options: type  # dataclass of the scenario's options
    profiles: dict[str, dict[str, Any]]  # profile -> {"scenario": {...}, "train": {...}}
    default_model: str = "mlp"
    origin: str = "builtin"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., Any]  # factory(info, profile, **kwargs) -> nn.Module
    description: str
    origin: str = "builtin"
    # validate(**model_args) raises ValueError for bad values or combinations, so a config is
    # rejected before any data is loaded; None: checked only when the model is built.
    validate: Callable[..., Any] | None = None


@dataclass(frozen=True)
class PluginSpec:
    """An Avalanche SupervisedPlugin that any strategy can add (`--set plugins=[name]`)."""

    name: str
    factory: Callable[..., Any]  # factory(info, config, params) -> avalanche SupervisedPlugin
    description: str
    params: type | None = None  # dataclass of options (`--set plugin.<name>.<field>=...`)
    origin: str = "builtin"


@dataclass(frozen=True)
class OptimizerSpec:
    """A torch.optim.Optimizer usable by any strategy (`--set optimizer=name`)."""

    name: str
    factory: Callable[..., Any]  # factory(params, train_config, opt_params) -> torch.optim.Optimizer
    description: str
    params: type | None = None  # dataclass of optimizer-specific options (`--set optim.<field>=...`)
    origin: str = "builtin"


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def add(self, spec: Any) -> None:
        previous = self._items.get(spec.name)
        if previous is not None and previous.origin != spec.origin:
            raise ClbenchError(
                f"{self.kind} {spec.name!r} is registered twice ({previous.origin} and {spec.origin})"
            )
        self._items[spec.name] = spec

    def get(self, name: str) -> Any:
        _load_all()
        if name not in self._items:
            raise UnknownNameError(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> list[str]:
        _load_all()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        _load_all()
        return name in self._items


STRATEGIES = Registry("strategy")
SCENARIOS = Registry("scenario")
MODELS = Registry("model")
PLUGINS = Registry("plugin")
OPTIMIZERS = Registry("optimizer")

# Module that is being imported by a plugin loader, recorded as the origin of
# whatever it registers (so that error messages can say where a name came from).
_current_origin = "builtin"


def _origin_of(fn: Callable) -> str:
    return _current_origin if _current_origin != "builtin" else getattr(fn, "__module__", "builtin")


def _check_params(name: str, params: type | None) -> None:
    if params is not None and not dataclasses.is_dataclass(params):
        raise ClbenchError(f"{name!r}: params must be a dataclass, got {params!r}")


def _registering(registry: Registry, make_spec: Callable[[Callable, str], Any]):
    """A decorator that registers the decorated function through `make_spec(fn, origin)`."""

    def decorate(fn: Callable) -> Callable:
        registry.add(make_spec(fn, _origin_of(fn)))
        return fn

    return decorate


def register_strategy(
    name: str,
    *,
    description: str,
    supports: tuple[str, ...] = SCENARIO_TYPES,
    params: type | None = None,
    defaults: dict[str, dict[str, Any]] | None = None,
):
    """Register `factory(ctx: StrategyContext) -> SupervisedTemplate` as strategy `name`.

    `supports` lists the scenario types the method is valid for; any other
    combination is rejected before training starts.
    """
    bad = [s for s in supports if s not in SCENARIO_TYPES]
    if bad:
        raise ClbenchError(f"strategy {name!r}: unknown scenario types {bad}; valid: {SCENARIO_TYPES}")
    _check_params(name, params)
    return _registering(STRATEGIES, lambda fn, origin: StrategySpec(
        name, fn, description, tuple(supports), params, defaults or {}, origin))


def register_scenario(
    name: str, *, description: str, scenario_type: str, options: type,
    profiles: dict[str, dict[str, Any]], default_model: str = "mlp",
):
    if scenario_type not in SCENARIO_TYPES:
        raise ClbenchError(f"scenario {name!r}: unknown type {scenario_type!r}; valid: {SCENARIO_TYPES}")
    return _registering(SCENARIOS, lambda fn, origin: ScenarioSpec(
        name, fn, description, scenario_type, options, profiles, default_model, origin))


def register_model(name: str, *, description: str, validate: Callable[..., Any] | None = None):
    return _registering(MODELS, lambda fn, origin: ModelSpec(name, fn, description, origin, validate))


def register_optimizer(name: str, *, description: str, params: type | None = None):
    _check_params(name, params)
    return _registering(OPTIMIZERS, lambda fn, origin: OptimizerSpec(name, fn, description, params, origin))


def register_plugin(name: str, *, description: str, params: type | None = None):
    _check_params(name, params)
    return _registering(PLUGINS, lambda fn, origin: PluginSpec(name, fn, description, params, origin))


# --------------------------------------------------------------------------- loading
_loaded = False
_ENTRY_POINT_GROUPS = (
    "clbench.strategies", "clbench.scenarios", "clbench.models", "clbench.plugins", "clbench.optimizers",
)


def _load_all() -> None:
    """Import built-ins, then installed entry points (once per process)."""
    global _loaded, _current_origin
    if _loaded:
        return
    _loaded = True
    importlib.import_module("clbench.models")
    importlib.import_module("clbench.anchor_models")
    importlib.import_module("clbench.cifar_train")
    importlib.import_module("clbench.text_models")
    importlib.import_module("clbench.text_encoder")
    importlib.import_module("clbench.optimizers")
    importlib.import_module("clbench.nested")
    importlib.import_module("clbench.scenarios")
    importlib.import_module("clbench.strategies")
    for group in _ENTRY_POINT_GROUPS:
        for ep in entry_points(group=group):
            _current_origin = f"entry point {ep.name} ({ep.value})"
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others
                raise ClbenchError(f"could not load {group} entry point {ep.name!r} ({ep.value}): {exc}") from exc
            finally:
                _current_origin = "builtin"


def load_plugin_file(path: str | Path) -> None:
    """Import a strategy/scenario/model file that is not installed (`--plugin`)."""
    global _current_origin
    _load_all()
    path = Path(path)
    if not path.is_file():
        raise ClbenchError(f"plugin file not found: {path}")
    module_name = f"clbench_plugin_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ClbenchError(f"cannot import plugin file {path} (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _current_origin = f"plugin file {path}"
    try:
        spec.loader.exec_module(module)
    except ClbenchError:
        raise
    except Exception as exc:
        del sys.modules[module_name]
        raise ClbenchError(f"error while importing plugin file {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        _current_origin = "builtin"
