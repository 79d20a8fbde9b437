"""From-scratch recurrent models for the text streams: `gru` (classifier and language model).

The other from-scratch text models are the HOPE family (`hope`, `hope_attention` and the
size control `transformer_matched`, clbench.nested.hope.zoo), which read token ids through
an embedding and, on a language-modelling stream, predict from every position.

`gru` adapts to the stream:
- classification (token ids [B, L], 0 = padding): the GRU's state after the last real
  token of each text (padding at the end never reaches it), then a linear head;
- language modelling (metric "bpc", ids [B, L]): next-token logits [B, L, V] from the
  state at every position; the embedding has no padding row, since every id is a symbol.
"""

from __future__ import annotations

import torch
from torch import nn

from clbench.models import with_head
from clbench.nested.hope.model import check_token_ids
from clbench.registry import register_model

# (embedding width, hidden width) per profile
GRU_DIMS = {"smoke": (16, 32), "quick": (64, 128), "full": (128, 256)}


def token_stream(info) -> tuple[int, bool]:
    """(vocab_size, is_language_model) of a token stream, or a clear error for images."""
    if "vocab_size" not in info.extra:
        raise ValueError(f"model 'gru' reads token ids; scenario {info.name!r} has input shape {info.input_shape}")
    return int(info.extra["vocab_size"]), info.metric_name == "bpc"


class GRUFeatures(nn.Module):
    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int, per_token: bool):
        super().__init__()
        self.per_token = per_token
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=None if per_token else 0)
        self.gru = nn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        self.out_features = hidden

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = check_token_ids(ids, self.embed.num_embeddings)
        states, _ = self.gru(self.embed(ids))  # [B, L, hidden]
        if self.per_token:
            return states
        # State after the last non-padding token; an empty text (all padding) reads position 0.
        last = ((ids != 0).sum(1) - 1).clamp_min(0)
        return states[torch.arange(len(ids), device=ids.device), last]


@register_model(
    "gru",
    description="GRU over token ids: last-token state -> head (classification), or next-token "
    "logits at every position (language modelling, e.g. brown_lm)",
)
def build_gru(info, profile: str, embed: int | None = None, hidden: int | None = None, layers: int = 1) -> nn.Module:
    vocab, lm = token_stream(info)
    default_embed, default_hidden = GRU_DIMS[profile]
    embed, hidden = embed or default_embed, hidden or default_hidden
    if embed < 1 or hidden < 1 or layers < 1:
        raise ValueError(f"gru needs embed, hidden, layers >= 1; got {embed}, {hidden}, {layers}")
    features = GRUFeatures(vocab, embed, hidden, layers, per_token=lm)
    return with_head(features, hidden, info)
