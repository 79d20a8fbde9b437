"""HOPE classifiers: tokenizer -> HOPE blocks -> readout -> head (nested_learning.md §6.1, §8.4).

A HOPE block is a Transformer block with attention replaced by self-modifying Titans and
the MLP replaced by a CMS chain (Eq. 94-97), both pre-norm residual branches. HOPE-Attention
keeps causal softmax attention (the paper's comparison). The CMS chain's levels are
updated at their own rates by the multi-rate optimizer (`strategies/hope.py`, reading R2 of
the CMS time axis, docs/hope.md); built by itself the model is an ordinary network.

Images become patch sequences (Design B): MNIST as 16 tokens of 7x7 patches (or 28 row
tokens), CIFAR as 64 tokens of 4x4x3 patches or of a small conv stem's 8x8 map. Text enters
through a token embedding. A sequence of feature vectors [T, C] (e.g. the spatial tokens of a
frozen backbone's last feature map) enters through a per-token LayerNorm and a linear projection. A learned CLS token is appended *last*, since the layers are
causal, and the readout takes it (or the mean over tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clbench.nested.cms import CMSChain
from clbench.nested.hope.titans import RESET_POLICIES, SelfModifyingTitans

TOKENIZERS = ("patch", "rows", "conv", "embedding", "features")
READOUTS = ("cls", "mean", "tokens")  # tokens: every position (language modelling)


# --------------------------------------------------------------------------- tokenizers
class PatchTokenizer(nn.Module):
    """Non-overlapping p x p patches (all channels) -> linear embedding; p = width gives rows."""

    def __init__(self, input_shape, d_model: int, patch: int, rows: bool = False):
        super().__init__()
        c, h, w = input_shape
        self.ph, self.pw = (1, w) if rows else (patch, patch)
        if h % self.ph or w % self.pw:
            raise ValueError(f"patch size {patch} does not tile the {h}x{w} input")
        self.n_tokens = (h // self.ph) * (w // self.pw)
        self.embed = nn.Linear(c * self.ph * self.pw, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, kernel_size=(self.ph, self.pw), stride=(self.ph, self.pw))
        return self.embed(patches.transpose(1, 2))  # [B, tokens, d]


class ConvStemTokenizer(nn.Module):
    """Two stride-2 3x3 convs: a 32x32 image becomes an 8x8 map, i.e. 64 tokens."""

    def __init__(self, input_shape, d_model: int):
        super().__init__()
        c, h, w = input_shape
        self.stem = nn.Sequential(
            nn.Conv2d(c, d_model // 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(d_model // 2, d_model, 3, stride=2, padding=1),
        )
        self.n_tokens = math.ceil(h / 4) * math.ceil(w / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2)


class TokenEmbedding(nn.Module):
    """Token ids [B, T] (0 = padding) -> embeddings; the entry point for text streams."""

    def __init__(self, vocab_size: int, max_len: int, d_model: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.n_tokens = max_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(check_token_ids(x, self.embed.num_embeddings))


class FeatureTokenizer(nn.Module):
    """Feature vectors [B, T, C] -> parameter-free LayerNorm over C -> linear projection to d_model.

    The norm puts every token on one scale whatever the backbone emits (MobileNetV2's last map
    is post-ReLU6: non-negative, sparse, magnitudes varying across positions). It has no gain or
    bias because the projection right after it would absorb them (as in the CMS blocks), so the
    tokenizer's parameters are exactly the projection's. One projection is shared by all T
    positions, as the patch embedding is; positions come from HopeFeatures' learned table.
    """

    def __init__(self, input_shape, d_model: int):
        super().__init__()
        self.n_tokens, self.in_dim = input_shape
        self.norm = nn.LayerNorm(self.in_dim, elementwise_affine=False)
        self.embed = nn.Linear(self.in_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.norm(x.float()))


def check_token_ids(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """x as int64, or a clear error when it holds ids the embedding does not have: the data
    was tokenized with another vocabulary than the one the model was built for."""
    ids = x.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"token ids range over [{int(ids.min())}, {int(ids.max())}] but the model's vocabulary has "
            f"{vocab_size} ids: the stream and the model use different tokenizers or vocabularies"
        )
    return ids


def input_kind(info) -> str:
    """What a stream feeds the model: "token_ids" (text), "features" ([T, C] float vectors),
    "images" ([C, H, W]) or "vector" (one flat vector, e.g. pooled features)."""
    if "vocab_size" in info.extra:
        return "token_ids"
    return {2: "features", 3: "images"}.get(len(info.input_shape), "vector")


# the tokenizers each input kind accepts, and how errors name the kind
ACCEPTS = {"token_ids": ("embedding",), "features": ("features",), "images": ("patch", "rows", "conv")}
DESCRIBE = {"token_ids": "token ids", "features": "feature tokens [T, C]", "images": "images [C, H, W]"}


def make_tokenizer(kind: str, info, d_model: int, patch: int) -> nn.Module:
    have, shape = input_kind(info), tuple(info.input_shape)
    if have == "vector":  # nothing to tokenize, whichever tokenizer was asked for
        raise ValueError(f"scenario {info.name!r} gives one flat vector of shape {shape}; HOPE models need a "
                         "sequence: images, token ids or feature tokens [T, C] (e.g. scenario.features=tokens)")
    if kind not in ACCEPTS[have]:
        raise ValueError(f"tokenizer {kind!r} does not fit scenario {info.name!r}, whose input is "
                         f"{DESCRIBE[have]} of shape {shape}; valid for it: auto, {', '.join(ACCEPTS[have])}")
    if kind == "embedding":
        extra = info.extra
        if "max_len" not in extra:
            raise ValueError(f"tokenizer 'embedding' needs info.extra['max_len']; scenario {info.name!r} has none")
        return TokenEmbedding(extra["vocab_size"], extra["max_len"], d_model)
    if kind == "features":
        return FeatureTokenizer(info.input_shape, d_model)
    if kind == "conv":
        return ConvStemTokenizer(info.input_shape, d_model)
    return PatchTokenizer(info.input_shape, d_model, patch, rows=kind == "rows")


# --------------------------------------------------------------------------- blocks
class CausalAttention(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, t, d))


class HopeBlock(nn.Module):
    """x + mixer(norm(x)), then the CMS chain (its blocks are pre-norm residual themselves)."""

    def __init__(self, mixer: nn.Module, d_model: int, cms: CMSChain):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer, self.cms = mixer, cms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cms(x + self.mixer(self.norm(x)))


# --------------------------------------------------------------------------- classifier features
class HopeFeatures(nn.Module):
    """Tokens (+ positions, + CLS last) -> blocks -> norm -> one d_model vector per example."""

    def __init__(self, tokenizer: nn.Module, blocks: list[nn.Module], d_model: int, readout: str):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; valid: {', '.join(READOUTS)}")
        self.tokenizer, self.readout = tokenizer, readout
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.randn(1, tokenizer.n_tokens + 1, d_model) * 0.02)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d_model)
        self.out_features = d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(x)
        if self.readout != "tokens":  # a language model predicts from every position, no CLS
            tokens = torch.cat([tokens, self.cls.expand(len(tokens), -1, -1)], dim=1)
        h = tokens + self.pos[:, : tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        if self.readout == "tokens":
            return h  # [B, T, d]: the head maps every position to next-token logits
        return h[:, -1] if self.readout == "cls" else h[:, :-1].mean(1)

    def titans_layers(self) -> list[SelfModifyingTitans]:
        return [m for m in self.modules() if isinstance(m, SelfModifyingTitans)]

    def set_reset_policy(self, policy: str) -> None:
        """D4: when the fast states return to their meta-learned initial values."""
        if policy not in RESET_POLICIES:
            raise ValueError(f"unknown reset policy {policy!r}; valid: {', '.join(RESET_POLICIES)}")
        for layer in self.titans_layers():
            layer.reset_policy = policy
            layer.reset_fast_state()

    def reset_fast_state(self) -> None:
        for layer in self.titans_layers():
            layer.reset_fast_state()


def find_hope_features(model: nn.Module) -> HopeFeatures | None:
    return next((m for m in model.modules() if isinstance(m, HopeFeatures)), None)
