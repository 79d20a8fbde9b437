"""Gated DGD rule: the linear-memory core op of HOPE's memories (kernel spec K1).

    S_t = alpha_t S_{t-1} - eta_t k_t (k_tᵀ S_{t-1}) [if dgd] + eta_t k_t w_tᵀ
    o_t = S_{t-1}ᵀ q_t (read_before_write) or S_tᵀ q_t

`naive.py` is the token-loop reference, `chunk.py` the chunked closed form. The
chunk-start correction of HOPE (w = v̂ - S̄ᵀ k) is not part of the op: callers pass
the already-corrected w.
"""

from __future__ import annotations

import torch

from .chunk import dgd_rule_chunk, dgd_rule_one_chunk
from .naive import dgd_rule_naive

__all__ = ["dgd_rule", "dgd_rule_chunk", "dgd_rule_naive", "dgd_rule_one_chunk"]

IMPLS = ("auto", "naive", "chunk")


def dgd_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    *,
    dgd: bool = True,
    read_before_write: bool = True,
    chunk_size: int = 16,
    impl: str = "auto",
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to an implementation; returns (o [B, T, H, V], S_T [B, H, K, V]).

    impl: "naive" (token loop), "chunk" (chunked PyTorch) or "auto". "auto" is
    "chunk" for now; once the Triton kernel lands it will pick Triton for CUDA
    tensors and keep "chunk" on CPU. chunk_size is ignored by "naive".
    check_values=False skips the NaN/inf and gate-range scans of "chunk" (see there).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    if impl == "naive":
        return dgd_rule_naive(q, k, w, eta, alpha, s0, dgd=dgd, read_before_write=read_before_write)
    # "auto" and "chunk" both land here until the Triton kernel exists; "auto" will then
    # route CUDA tensors to it (with "chunk" kept as the CPU path and for debugging).
    return dgd_rule_chunk(
        q,
        k,
        w,
        eta,
        alpha,
        s0,
        chunk_size=chunk_size,
        dgd=dgd,
        read_before_write=read_before_write,
        check_values=check_values,
    )
