"""Multi-rate optimizer wrapper and the `cms_multirate` plugin (CMS update rule, Eq. 71).

Each level is a parameter group with a period C in training iterations (reading R2, D1).
Every iteration the level's gradient is added to an accumulator that lives outside `.grad`
(Avalanche zeroes `.grad` before each forward); when C gradients have been collected the
level's own inner optimizer steps once on their sum or mean (D6) and the accumulator is
cleared. A level's inner optimizer is built through the clbench optimizer registry and only
advances at that level's updates (D7). Period-1 levels step directly on `.grad`, so with
all periods 1 the wrapper performs exactly the plain optimizer's arithmetic.

Levels whose inner optimizer is torch.optim SGD, Adam or AdamW run on kernel K3
(`clbench.kernels.cms_step`: one fused Triton launch per level step on CUDA, its foreach
reference on CPU, bit-identical to torch.optim there); any other optimizer (DMGD, M3, ...)
or `MultiRateOptimizer(..., kernel=False)` keeps the per-level path described above.
The wrapper itself is in `clbench.nested.multirate_optimizer`; this module holds the
options, the level assignment and the Avalanche plugin.

Avalanche 0.6 and the optimizer (avalanche_and_anchors.md §0.3, §1.2): before every
training experience `check_model_and_optimizer` calls `make_optimizer` ->
`update_optimizer(strategy.optimizer, model.named_parameters(), ...)`. It never rebuilds
the optimizer: it adds every model parameter missing from `optimizer.param_groups`
(to an inferred group), swaps references of replaced parameters, and, on the first call
only (or with `train(..., reset_optimizer_state=True)`), assigns `optimizer.state = {}`.
The wrapper is a `torch.optim.Optimizer` whose groups are the levels and hold every
parameter, so `update_optimizer` finds nothing to add and the wrapper survives as is. It
keeps its real state (inner optimizers, accumulators) outside `self.state`, so Avalanche's
reset does not touch it; D12 (keep or reset at experience boundaries) is the plugin's
`keep_state` option instead. If Avalanche ever does change a group (a dynamic head, a
model replaced by GDumb), `sync()` at the next experience start rebuilds that level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from clbench.errors import ConfigError
from clbench.nested.cms import CMSChain, assign_levels, find_chains
from clbench.nested.multirate_optimizer import Level, MultiRateOptimizer
from clbench.registry import MODELS, OPTIMIZERS, register_plugin

__all__ = ["Level", "MultiRateOptimizer", "MultiRateParams", "MultiRatePlugin", "build_plugin"]

RULES = ("auto", "cms", "depth", "names")


@dataclass
class MultiRateParams:
    periods: list[int] = field(default_factory=lambda: [1, 8, 64])  # iterations, one per level
    # Which parameters form each level (D9): "cms" = the model's CMS levels; "depth" = the
    # layers in forward order, split into len(periods) contiguous groups; "names" = `groups`;
    # "auto" = "cms" when the model has a CMSChain, else "depth".
    rule: Literal["auto", "cms", "depth", "names"] = "auto"
    groups: list[str] = field(default_factory=list)  # rule "names": per level, globs joined by "|"
    lr_mults: list[float] = field(default_factory=list)  # per level; empty = all 1; 0 freezes
    reduction: Literal["mean", "sum"] = "mean"  # D6
    flush: bool = True  # D8: apply partial chunks at the end of each experience
    keep_state: bool = True  # D12: keep inner-optimizer state and accumulators across experiences
    inner_optimizer: list[str] = field(default_factory=list)  # empty = the run's optimizer
    # rule "cms": non-CMS params (stem, norms, head) in their own period-1 group, or in level 0
    outer: Literal["own", "fastest"] = "own"
    nested_reset: Literal["experience", "chunk"] = "experience"  # nested CMS re-initialisation time

    def __post_init__(self):
        n = len(self.periods)
        if n == 0:
            raise ValueError("periods must list one period per level, e.g. [1, 8, 64]")
        bad = [p for p in self.periods if isinstance(p, bool) or not isinstance(p, int) or p < 1]
        if bad:
            raise ValueError(
                f"periods must be positive integers (training iterations); got {self.periods}"
            )
        if self.rule not in RULES:
            raise ValueError(f"unknown level rule {self.rule!r}; valid: {', '.join(RULES)}")
        if self.rule == "names" and len(self.groups) != n:
            raise ValueError(
                f"rule 'names' needs one groups entry per period ({n}); got {len(self.groups)}"
            )
        if self.rule != "names" and self.groups:
            raise ValueError("groups is only used with rule='names'")
        if self.lr_mults and len(self.lr_mults) != n:
            raise ValueError(f"lr_mults needs one value per level ({n}); got {self.lr_mults}")
        if any(m < 0 for m in self.lr_mults):
            raise ValueError(f"lr_mults must be >= 0; got {self.lr_mults}")
        if len(self.inner_optimizer) not in (0, 1, n):
            raise ValueError(f"inner_optimizer takes 0, 1 or {n} names; got {self.inner_optimizer}")
        unknown = [o for o in self.inner_optimizer if o not in OPTIMIZERS]
        if unknown:
            raise ValueError(
                f"unknown inner optimizer {unknown[0]!r}; valid: {', '.join(OPTIMIZERS.names())}"
            )
        if self.nested_reset == "chunk" and self.rule not in ("auto", "cms"):
            raise ValueError("nested_reset='chunk' needs the CMS levels (rule 'cms' or 'auto')")


# --------------------------------------------------------------------------- plugin
@register_plugin(
    "cms_multirate",
    params=MultiRateParams,
    description="CMS multi-rate updates on any model: per-level periods, lr, inner optimizer",
)
def build_plugin(info, config, params: MultiRateParams):
    plugin = MultiRatePlugin(params, config.train, config.optimizer_args)
    # The factory does not see the run's model: check the level assignment on a throwaway
    # copy now (strategy build time) so a bad assignment fails before any training.
    with torch.random.fork_rng(devices=[]):
        plugin.check(MODELS.get(config.model).factory(info, config.profile, **config.model_args))
    return plugin


class MultiRatePlugin(SupervisedPlugin):
    """Installs a MultiRateOptimizer as `strategy.optimizer` and runs its boundary hooks.

    Nested CMS re-initialisation is done here (D4): at each experience start after the
    first (`nested_reset="experience"`), or whenever level i+1 updates, block i is reset
    (`"chunk"`, Eq. 72's "after block s's context ends").
    """

    def __init__(self, params: MultiRateParams, train, optimizer_args: dict | None = None):
        super().__init__()
        self.params, self.train, self.optimizer_args = params, train, dict(optimizer_args or {})
        self.optimizer: MultiRateOptimizer | None = None
        self.chains: list[CMSChain] = []
        self.n_cms_levels = 0
        self.experiences_done = 0

    def check(self, model: nn.Module) -> list[tuple[str, list[str], int, float, str]]:
        """Level specs (name, param names, period, lr multiplier, inner optimizer name);
        a ConfigError naming the parameter when the assignment is not a partition."""
        levels, rule = assign_levels(
            model, len(self.params.periods), self.params.rule, self.params.groups, self.params.outer
        )
        p = self.params
        n = len(p.periods)
        mults = p.lr_mults or [1.0] * n
        inner = (
            p.inner_optimizer * n
            if len(p.inner_optimizer) == 1
            else (p.inner_optimizer or [self.train.optimizer] * n)
        )
        nested = (
            [c for _, c in find_chains(model) if c.variant == "nested"] if rule == "cms" else []
        )
        if nested and any(a > b for a, b in zip(p.periods, p.periods[1:], strict=False)):
            raise ConfigError(
                f"nested CMS learns block i's initial state in level i+1, so periods must not "
                f"decrease along the chain; got {p.periods}"
            )
        specs = [
            (f"level{i}", names, p.periods[i], mults[i], inner[i])
            for i, names in enumerate(levels[:n])
        ]
        if (
            len(levels) > n and levels[n]
        ):  # the outer group: every iteration, base lr, run's optimizer
            specs.append(("outer", levels[n], 1, 1.0, self.train.optimizer))
        return specs

    def bind(self, model: nn.Module) -> MultiRateOptimizer:
        specs = self.check(model)
        named = dict(model.named_parameters())
        builders = {
            name: _registry_builder(name, self.train, self.optimizer_args) for *_, name in specs
        }
        levels = [
            Level(name, [named[x] for x in names], period, mult)
            for name, names, period, mult, _ in specs
        ]
        self.optimizer = MultiRateOptimizer(
            levels,
            lambda i, ps, mult: builders[specs[i][4]](ps, mult),
            reduction=self.params.reduction,
        )
        self.n_cms_levels = len(self.params.periods)
        return self.optimizer

    def before_training(self, strategy, **kwargs):
        # Runs before make_optimizer of the first experience, so Avalanche registers the
        # wrapper's groups (not the original optimizer's) as the optimized parameters.
        if self.optimizer is None:
            self.bind(strategy.model)
        strategy.optimizer = self.optimizer

    def before_training_exp(self, strategy, **kwargs):
        self.optimizer.sync()
        self.chains = [
            c for _, c in find_chains(strategy.model) if c.variant == "nested"
        ]  # model may be new
        if self.experiences_done == 0:
            return
        if not self.params.keep_state:
            self.optimizer.reset_state()
        if self.params.nested_reset == "experience":
            for chain in self.chains:
                chain.reset_fast()

    def after_update(self, strategy, **kwargs):
        self._chunk_resets(self.optimizer.last_fired)

    def after_training_exp(self, strategy, **kwargs):
        if self.params.flush:
            self._chunk_resets(self.optimizer.flush())
        self.experiences_done += 1

    def _chunk_resets(self, fired: list[int]) -> None:
        if self.params.nested_reset != "chunk" or not self.chains:
            return
        for level in fired:
            if 1 <= level < self.n_cms_levels:
                for chain in self.chains:
                    chain.reset_block(level - 1)


def _registry_builder(name: str, train, optimizer_args: dict) -> Callable:
    """Build optimizer `name` for one level, at lr = run lr x the level's multiplier.
    The run's optimizer options (`optim.*`) apply when `name` is the run's optimizer;
    any other registered optimizer gets its default options."""
    spec = OPTIMIZERS.get(name)
    options = None
    if spec.params is not None:
        options = spec.params(**optimizer_args) if name == train.optimizer else spec.params()

    def build(params, lr_mult: float):
        return spec.factory(params, dataclasses.replace(train, lr=train.lr * lr_mult), options)

    return build
