"""Continuum Memory System (CMS): a chain of MLP blocks whose parameters live at different rates.

nested_learning.md §5, Design A (§8.3). The model only defines *which* parameters form each
level; *when* a level is updated is the optimizer's business (`clbench.nested.multirate`),
so a CMS model trained without the multi-rate wrapper is an ordinary residual MLP.

Block layout: pre-norm residual MLP, `x + fc2(gelu(fc1(norm(x))))`. The block norms are
parameter-free: an affine gain/bias in front of `fc1` is absorbed by `fc1`, and keeping them
out means every block parameter belongs to exactly one CMS level (D9).

Levels are numbered in forward order: level i is block i (nearest the input first). Periods
are attached to levels by the wrapper, in the same order.

Variants (`variant=` model argument):
- sequential (default, Eq. 70/73): blocks chained, all initial states learned by backprop.
- nested (Eq. 72): every block but the last has weights `init + delta`. `delta` is level i
  (fast); `init` belongs to level i+1, so the next slower level learns block i's initial
  state from the same task gradient over its own, longer chunk. `reset_fast()` /
  `reset_block(i)` set `delta` to zero, i.e. re-initialise the fast block from its learned
  initial state; the multi-rate plugin calls them at experience (or chunk) boundaries.
- independent (Eq. 74): blocks read the same input; a learnable weighted sum aggregates them.

Everything that is not in a CMS level (stem, final norm, head, aggregation weights) is
"outer": the multi-rate wrapper gives it its own every-iteration group, or the fastest level.

`assign_levels` turns a model into levels for the wrapper by one of the D9 rules: the CMS
levels, layer depth (any model), or name patterns; every parameter must land in exactly one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

from clbench.errors import ConfigError
from clbench.models import SlimResNetFeatures, count_parameters, mlp_features, with_head
from clbench.registry import register_model

VARIANTS = ("sequential", "nested", "independent")
# (width, hidden) per profile. full follows §8.9 (512/1024); quick is sized for CPU minutes.
MLP_DIMS = {"smoke": (32, 64), "quick": (128, 256), "full": (512, 1024)}
RESNET_DIMS = {"smoke": (32, 64), "quick": (256, 512), "full": (512, 1024)}
DEFAULT_LEVELS = 3


class DeltaLinear(nn.Module):
    """A linear map with weight `init + delta`: `init` is the learned initial state (Eq. 72)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        ref = nn.Linear(in_features, out_features)  # same initial function as a plain block
        self.init_weight = nn.Parameter(ref.weight.detach().clone())
        self.init_bias = nn.Parameter(ref.bias.detach().clone())
        self.delta_weight = nn.Parameter(torch.zeros_like(ref.weight))
        self.delta_bias = nn.Parameter(torch.zeros_like(ref.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.init_weight + self.delta_weight, self.init_bias + self.delta_bias)

    @torch.no_grad()
    def reset(self) -> None:
        self.delta_weight.zero_()
        self.delta_bias.zero_()


class CMSBlock(nn.Module):
    """Pre-norm residual MLP block."""

    def __init__(self, dim: int, hidden: int, nested: bool = False):
        super().__init__()
        linear = DeltaLinear if nested else nn.Linear
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.fc1 = linear(dim, hidden)
        self.fc2 = linear(hidden, dim)
        self.nested = nested

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)

    def reset(self) -> None:
        for m in (self.fc1, self.fc2):
            if isinstance(m, DeltaLinear):
                m.reset()


class CMSChain(nn.Module):
    """k CMS blocks of width `dim`, connected as `variant` says; one level per block."""

    def __init__(
        self, dim: int, hidden: int, n_levels: int = DEFAULT_LEVELS, variant: str = "sequential"
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown CMS variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if n_levels < 1 or dim < 1 or hidden < 1:
            raise ValueError(
                f"CMS needs n_levels, dim, hidden >= 1; got {n_levels}, {dim}, {hidden}"
            )
        self.variant, self.n_levels = variant, n_levels
        # The slowest block is never reset, so it needs no separate initial state.
        self.blocks = nn.ModuleList(
            CMSBlock(dim, hidden, nested=variant == "nested" and i < n_levels - 1)
            for i in range(n_levels)
        )
        if variant == "independent":
            self.agg = nn.Parameter(torch.ones(n_levels))  # learnable weighted sum (Eq. 74)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "independent":
            return x + sum(
                w * block.branch(x) for w, block in zip(self.agg, self.blocks, strict=True)
            )
        for block in self.blocks:
            x = block(x)
        return x

    def level_param_names(self) -> list[list[str]]:
        """Parameter names (relative to the chain) of each level; level i is block i."""
        levels: list[list[str]] = [[] for _ in range(self.n_levels)]
        for i, block in enumerate(self.blocks):
            for name, _ in block.named_parameters():
                # A nested block's initial state is learned by the next (slower) level.
                level = i + 1 if name.rsplit(".", 1)[-1].startswith("init_") else i
                levels[level].append(f"blocks.{i}.{name}")
        return levels

    def reset_fast(self) -> None:
        """Nested variant: re-initialise every block but the slowest from its learned init."""
        for block in self.blocks:
            block.reset()

    def reset_block(self, index: int) -> None:
        if 0 <= index < self.n_levels:
            self.blocks[index].reset()


def find_chains(model: nn.Module) -> list[tuple[str, CMSChain]]:
    """Modules that define CMS levels: CMSChains, and any module with the same level
    interface (`n_levels`, `variant`, `level_param_names()`), such as the pretrained
    encoder's split FFNs (`clbench.text_encoder.SplitFFN`)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CMSChain) or _has_levels(m)]


def _has_levels(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("n_levels", "variant", "level_param_names"))


def cms_level_names(model: nn.Module) -> list[list[str]]:
    """Full parameter names of each CMS level of `model` (levels of several chains are merged
    by index). Parameters not listed are "outer" (stem, norms, head, aggregation)."""
    chains = find_chains(model)
    if not chains:
        raise ValueError(f"{type(model).__name__} contains no CMSChain")
    counts = {chain.n_levels for _, chain in chains}
    if len(counts) > 1:
        raise ValueError(f"CMS chains with different numbers of levels: {sorted(counts)}")
    levels: list[list[str]] = [[] for _ in range(counts.pop())]
    for prefix, chain in chains:
        for i, names in enumerate(chain.level_param_names()):
            levels[i] += [f"{prefix}.{n}" if prefix else n for n in names]
    return levels


def cms_levels(model: nn.Module) -> list[list[nn.Parameter]]:
    params = dict(model.named_parameters())
    return [[params[n] for n in names] for names in cms_level_names(model)]


# --------------------------------------------------------------------------- level rules (D9)
def assign_levels(
    model: nn.Module, n: int, rule: str = "auto", groups: Sequence[str] = (), outer: str = "own"
) -> tuple[list[list[str]], str]:
    """Parameter names per level (plus a trailing outer group for rule "cms"), checked so that
    every parameter is in exactly one group. Errors name the offending parameter."""
    named = [name for name, _ in model.named_parameters()]
    if rule == "auto":
        rule = "cms" if find_chains(model) else "depth"
    if rule == "cms":
        if not find_chains(model):
            raise ConfigError(
                f"level rule 'cms' needs a model with a CMSChain (cms_mlp, cms_resnet); "
                f"{type(model).__name__} has none: use rule 'depth' or 'names'"
            )
        try:
            levels = cms_level_names(model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if len(levels) != n:
            raise ConfigError(
                f"the model has {len(levels)} CMS levels but periods has {n} entries; "
                "set model.n_levels or the periods"
            )
        taken = {x for level in levels for x in level}
        rest = [x for x in named if x not in taken]
        if outer == "fastest":
            levels[0] = levels[0] + rest
        else:
            levels.append(rest)
    elif rule == "depth":
        levels = _depth_levels(model, n)
    else:
        levels = _name_levels(named, list(groups))
    _check_partition(named, levels, n)
    return levels, rule


def _depth_levels(model: nn.Module, n: int) -> list[list[str]]:
    """Modules owning parameters, in registration (= forward, for our models) order; the
    `classifier` (all task heads together) counts as one layer."""
    layers: list[list[str]] = []
    head: list[str] = []
    for mod_name, module in model.named_modules():
        own = [
            f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)
        ]
        if not own:
            continue
        (head if mod_name == "classifier" or mod_name.startswith("classifier.") else layers).append(
            own
        )
    if head:
        layers.append([x for names in head for x in names])
    if len(layers) < n:
        raise ConfigError(
            f"level rule 'depth': the model has {len(layers)} layers with parameters, "
            f"fewer than the {n} levels asked for by periods"
        )
    levels: list[list[str]] = [[] for _ in range(n)]
    for j, names in enumerate(layers):
        levels[j * n // len(layers)] += names
    return levels


def _name_levels(named: list[str], groups: list[str]) -> list[list[str]]:
    patterns = [g.split("|") for g in groups]
    levels: list[list[str]] = [[] for _ in groups]
    for name in named:
        hits = [i for i, pats in enumerate(patterns) if any(fnmatchcase(name, p) for p in pats)]
        if not hits:
            raise ConfigError(
                f"parameter {name!r} is in no level: no pattern of groups {groups} matches it"
            )
        if len(hits) > 1:
            raise ConfigError(
                f"parameter {name!r} is in two levels ({hits[0]} and {hits[1]}): "
                f"patterns {groups[hits[0]]!r} and {groups[hits[1]]!r} both match it"
            )
        levels[hits[0]].append(name)
    return levels


def _check_partition(named: list[str], levels: list[list[str]], n: int) -> None:
    seen: dict[str, int] = {}
    for i, level in enumerate(levels):
        for name in level:
            if name in seen:
                raise ConfigError(f"parameter {name!r} is in two levels ({seen[name]} and {i})")
            seen[name] = i
    missing = [x for x in named if x not in seen]
    if missing:
        raise ConfigError(f"parameter {missing[0]!r} is in no level")
    empty = [i for i, level in enumerate(levels[:n]) if not level]  # an empty outer group is fine
    if empty:
        raise ConfigError(f"level {empty[0]} has no parameters")


# --------------------------------------------------------------------------- models
class CMSFeatures(nn.Module):
    """stem -> CMS chain -> final LayerNorm; `out_features` wide."""

    def __init__(self, stem: nn.Module, chain: CMSChain, dim: int):
        super().__init__()
        self.stem, self.chain, self.norm = stem, chain, nn.LayerNorm(dim)
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.chain(self.stem(x)))


def _dims(table, profile, width, hidden) -> tuple[int, int]:
    w, h = table[profile]
    return width or w, hidden or (2 * width if width else h)


def _in_features(info) -> int:
    return math.prod(info.input_shape)


@register_model(
    "cms_mlp",
    description="Linear stem + CMS chain (pre-norm residual MLP blocks) + head; "
    "variant sequential/nested/independent; multi-head for task-IL",
)
def build_cms_mlp(
    info,
    profile: str,
    width: int | None = None,
    hidden: int | None = None,
    n_levels: int = DEFAULT_LEVELS,
    variant: str = "sequential",
) -> nn.Module:
    dim, hid = _dims(MLP_DIMS, profile, width, hidden)
    stem = nn.Sequential(nn.Flatten(), nn.Linear(_in_features(info), dim))
    return with_head(CMSFeatures(stem, CMSChain(dim, hid, n_levels, variant), dim), dim, info)


@register_model(
    "cms_resnet",
    description="SlimResNet18 conv stem + CMS head for 32x32 RGB; multi-head for task-IL",
)
def build_cms_resnet(
    info,
    profile: str,
    width: int | None = None,
    hidden: int | None = None,
    n_levels: int = DEFAULT_LEVELS,
    variant: str = "sequential",
    nf: int = 20,
) -> nn.Module:
    if tuple(info.input_shape) != (3, 32, 32):  # the conv stem reshapes its input to 3x32x32
        raise ValueError(f"cms_resnet needs 32x32 RGB images (input shape (3, 32, 32)); scenario {info.name!r} "
                         f"has input shape {tuple(info.input_shape)}: use model cms_mlp for feature vectors")
    dim, hid = _dims(RESNET_DIMS, profile, width, hidden)
    conv = SlimResNetFeatures(nf)
    stem = nn.Sequential(conv, nn.Linear(conv.out_features, dim))
    return with_head(CMSFeatures(stem, CMSChain(dim, hid, n_levels, variant), dim), dim, info)


@register_model(
    "mlp_matched",
    description="Plain ReLU MLP whose width is chosen so its parameter "
    "count matches cms_mlp with the same arguments (size control)",
)
def build_mlp_matched(
    info,
    profile: str,
    width: int | None = None,
    hidden: int | None = None,
    n_levels: int = DEFAULT_LEVELS,
    variant: str = "sequential",
    layers: int = 2,
) -> nn.Module:
    if layers < 1:
        raise ValueError(f"mlp_matched needs layers >= 1, got {layers}")
    with torch.random.fork_rng(devices=[]):  # counting must not move the run's RNG
        target = count_parameters(build_cms_mlp(info, profile, width, hidden, n_levels, variant))
    n_in = _in_features(info)
    if info.scenario_type == "task_il":
        head_units = info.n_experiences * max(len(c) for c in info.classes_per_exp)
    else:
        head_units = info.n_classes

    def size(h: int) -> int:
        return n_in * h + h + (layers - 1) * (h * h + h) + (h + 1) * head_units

    # size() is increasing in h: take the width whose count is closest to the target.
    h = 1
    while size(h) < target:
        h += 1
    if h > 1 and target - size(h - 1) < size(h) - target:
        h -= 1
    model = with_head(mlp_features(n_in, h, layers), h, info)
    model.matched_to = target  # kept on the model so tests and reports can show both counts
    return model
