"""Registered HOPE models: `hope`, `hope_attention` and the size control `transformer_matched`.

Sizes per profile (nested_learning.md §8.9 for full; quick is sized so that `make bench`
stays within its CPU budget, smoke for tests). `hope` is the paper's full Table 6 model (DGD,
Titans-form momentum, retention, adaptive k and v, static q, CMS); every "w/o" row is a model
argument: `model.dgd=false`, `model.momentum=false`, `model.retention=false`,
`model.adaptive_k=false`, `model.adaptive_v=false`, `model.adaptive_q=true`; "w/o CMS" is the
hope strategy's `strategy.cms=false` (same network, every level updated every step). Our own
departures are options too: `model.normalize_v=false`, `model.w1_step=plain`,
`model.momentum_form=inner`.
"""

from __future__ import annotations

import torch
from torch import nn

from clbench.models import count_parameters, with_head
from clbench.nested.cms import VARIANTS, CMSChain
from clbench.nested.hope.model import (
    READOUTS,
    TOKENIZERS,
    CausalAttention,
    HopeBlock,
    HopeFeatures,
    input_kind,
    make_tokenizer,
)
from clbench.nested.hope.titans import RESET_POLICIES, SelfModifyingTitans, TitansOptions
from clbench.registry import register_model

# (d_model, depth, heads) per profile; CIFAR-sized inputs get the wider, deeper full model.
# quick is sized for `make bench` on 2 CPU cores (about 1 min per split_mnist cell, 2 per
# pmnist cell, 1 thread): every memory of every head is its own small matrix recurrence per
# image, so cost grows with width x heads x memory size. quick also defaults to linear
# memories (2.5x cheaper than the MLP ones on CPU); full uses the paper's MLP memories.
# mid (`model.size=mid`, any profile) is the ~100k-parameter HOPE of the comparison study: MLP
# memories, sized to reach the MLP baselines' plasticity on P-MNIST within a quick cell's CPU
# budget (docs/hope.md). `model.size=auto` takes the run's profile.
DIMS = {"smoke": (16, 1, 2), "quick": (16, 1, 2), "mid": (64, 1, 4), "full": (128, 2, 4)}
SIZES = ("auto", *DIMS)
FULL_CIFAR = (192, 4, 4)


def default_memory(size: str) -> str:
    return "mlp" if size in ("mid", "full") else "linear"


def _size(profile: str, size: str) -> str:
    """The size table row a model is built at: `size`, or the run's profile for "auto"."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    return profile if size == "auto" else size


def _dims(info, size, d_model, depth, heads):
    # Only a 3x32x32 image is CIFAR: feature tokens [T, 32] and text windows of 32 ids are not.
    # At quick, d_model 32 bought +2.6 points over 16 in benchmarks/features_hope_width.md
    # (3 seeds, overlapping) for 1.1-1.4x the training time, so 16 stays (docs/hope.md).
    cifar = size == "full" and tuple(info.input_shape) == (3, 32, 32)
    table = FULL_CIFAR if cifar else DIMS[size]
    return d_model or table[0], depth or table[1], heads or table[2]


def _tokenizer_args(info, tokenizer: str, patch: int | None):
    if tokenizer == "auto":  # token ids -> embedding, [T, C] feature vectors -> features, images -> patch
        tokenizer = {"token_ids": "embedding", "features": "features"}.get(input_kind(info), "patch")
    if patch is None:  # MNIST 28x28 -> 16 tokens of 7x7; CIFAR 32x32 -> 64 tokens of 4x4x3
        patch = 7 if len(info.input_shape) == 3 and info.input_shape[-1] == 28 else 4
    return tokenizer, patch


def _check_common(tokenizer, readout, cms_levels, cms_hidden_mult, cms_variant):
    if tokenizer != "auto" and tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: auto, {', '.join(TOKENIZERS)}")
    if readout != "auto" and readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; valid: auto, {', '.join(READOUTS)}")
    if cms_variant not in VARIANTS:
        raise ValueError(f"unknown cms_variant {cms_variant!r}; valid: {', '.join(VARIANTS)}")
    if cms_levels < 1 or cms_hidden_mult < 1:
        raise ValueError(f"cms_levels and cms_hidden_mult must be >= 1, got {cms_levels}, {cms_hidden_mult}")


def _readout(info, readout: str) -> str:
    """"auto": CLS for classification, every position for language modelling (metric bpc)."""
    lm = info.metric_name == "bpc"
    if readout == "auto":
        return "tokens" if lm else "cls"
    if lm != (readout == "tokens"):
        raise ValueError(
            f"readout {readout!r} does not fit scenario {info.name!r}: language modelling needs "
            "readout 'tokens' (or 'auto'), classification 'cls' or 'mean'"
        )
    return readout


def _features(info, size, d_model, depth, heads, tokenizer, patch, readout, cms_levels, cms_hidden_mult,
              cms_variant, make_mixer) -> HopeFeatures:
    _check_common(tokenizer, readout, cms_levels, cms_hidden_mult, cms_variant)
    d, n_blocks, h = _dims(info, size, d_model, depth, heads)
    kind, patch = _tokenizer_args(info, tokenizer, patch)
    readout = _readout(info, readout)
    blocks = [
        HopeBlock(make_mixer(d, h, i), d, CMSChain(d, cms_hidden_mult * d, cms_levels, cms_variant))
        for i in range(n_blocks)
    ]
    return HopeFeatures(make_tokenizer(kind, info, d, patch), blocks, d, readout)


COMMON_DEFAULTS = dict(tokenizer="auto", readout="auto", cms_levels=3, cms_hidden_mult=2, cms_variant="sequential")


def validate_common(**args) -> None:
    """Config-time check of the arguments every HOPE-style model shares."""
    _check_common(**{k: args.get(k, v) for k, v in COMMON_DEFAULTS.items()})
    _size("quick", args.get("size", "auto"))


def validate_hope(**args) -> None:
    validate_common(**args)
    if args.get("reset", "example") not in RESET_POLICIES:
        raise ValueError(f"unknown reset policy {args['reset']!r}; valid: {', '.join(RESET_POLICIES)}")
    TitansOptions(**{k: v for k, v in args.items() if k in TitansOptions.__dataclass_fields__ and v is not None})


@register_model(
    "hope",
    description="HOPE (Design B): patch/token/feature-vector sequence -> [self-modifying Titans + CMS chain] blocks -> CLS "
    "readout -> head; Table 6 ablation flags; multi-head for task-IL",
    validate=validate_hope,
)
def build_hope(
    info, profile: str, d_model: int | None = None, depth: int | None = None, heads: int | None = None,
    memory: str | None = None, memory_hidden_mult: int = 2, chunk_other: int = 4, chunk_mem: int = 8,
    dgd: bool = True, momentum: bool = True, momentum_form: str = "titans", retention: bool = True,
    adaptive_k: bool = True, adaptive_v: bool = True, adaptive_q: bool = False, normalize_v: bool = True,
    w1_step: str = "normalized", stop_grad_writes: bool = False, eta_max: float = 0.5,
    reset: str = "example", cms_levels: int = 3, cms_hidden_mult: int = 2, cms_variant: str = "sequential",
    tokenizer: str = "auto", patch: int | None = None, readout: str = "auto", kernels: str = "auto",
    size: str = "auto",
) -> nn.Module:
    size = _size(profile, size)

    def titans(d, h, i):
        options = TitansOptions(
            heads=h, memory=memory or default_memory(size), memory_hidden_mult=memory_hidden_mult, chunk_other=chunk_other,
            chunk_mem=chunk_mem, dgd=dgd, momentum=momentum, momentum_form=momentum_form, retention=retention,
            adaptive_k=adaptive_k, adaptive_v=adaptive_v, adaptive_q=adaptive_q, normalize_v=normalize_v,
            w1_step=w1_step, stop_grad_writes=stop_grad_writes, eta_max=eta_max,
            kernels=kernels,
        )
        return SelfModifyingTitans(d, options, name=f"blocks.{i}.mixer")

    features = _features(info, size, d_model, depth, heads, tokenizer, patch, readout, cms_levels,
                         cms_hidden_mult, cms_variant, titans)
    features.set_reset_policy(reset)
    return with_head(features, features.out_features, info)


@register_model(
    "hope_attention",
    description="HOPE-Attention: HOPE blocks with causal softmax attention instead of self-modifying Titans",
    validate=validate_common,
)
def build_hope_attention(
    info, profile: str, d_model: int | None = None, depth: int | None = None, heads: int | None = None,
    cms_levels: int = 3, cms_hidden_mult: int = 2, cms_variant: str = "sequential",
    tokenizer: str = "auto", patch: int | None = None, readout: str = "auto", size: str = "auto",
) -> nn.Module:
    features = _features(info, _size(profile, size), d_model, depth, heads, tokenizer, patch, readout,
                         cms_levels, cms_hidden_mult, cms_variant, lambda d, h, i: CausalAttention(d, h))
    return with_head(features, features.out_features, info)


@register_model(
    "transformer_matched",
    description="Size control: a causal Transformer (attention + one MLP per block) whose width "
    "is chosen so its parameter count matches `hope` with the same profile (or size) and depth",
)
def build_transformer_matched(
    info, profile: str, depth: int | None = None, heads: int | None = None, tokenizer: str = "auto",
    patch: int | None = None, readout: str = "auto", mlp_mult: int = 4, size: str = "auto",
) -> nn.Module:
    size = _size(profile, size)
    with torch.random.fork_rng(devices=[]):  # counting must not move the run's RNG
        target = count_parameters(build_hope(info, profile, depth=depth, heads=heads, tokenizer=tokenizer,
                                             patch=patch, readout=readout, size=size))
        _, _, h = _dims(info, size, None, depth, heads)

        def make(d: int) -> nn.Module:
            features = _features(info, size, d, depth, h, tokenizer, patch, readout, 1, mlp_mult,
                                 "sequential", lambda d_, h_, i: CausalAttention(d_, h_))
            return with_head(features, d, info)

        widths = list(range(h, 64 * h + 1, h))
        best = min(widths, key=lambda d: abs(count_parameters(make(d)) - target))
    return make(best)
