"""2-layer MLP memory with the gated DGD rule, chunk by chunk (kernel spec K2, no momentum).

Per group g (memory x head): M(z) = z + silu(z S2) S1, state S2 = W2ᵀ [d, h], S1 = W1ᵀ [h, d].
Each chunk takes the inner gradient of 1/2 ||M(k_t) - v̂_t||² at its start weights, then
S2 learns by the DGD rule (keys k) and S1 by plain retention (keys silu(k S2)); reads
M_{t-1}(q_t), read before write. `chunk.py` states the math.

`naive.py` is the token loop, `chunk.py` the chunked PyTorch path (HOPE's `MLPMemory`
runs its one-chunk body), `triton.py` the fused forward kernel (one program per (b, g),
both states in registers; backward by recompute through `chunk.py`), imported lazily:
TRITON_INTERPRET is read when its kernel is decorated. Momentum is not part of the op:
with DGD it has no closed form, so HOPE keeps its PyTorch token loop for it.
"""

from __future__ import annotations

import torch

from ..dgd_rule import resolve_impl
from .chunk import mlp_memory_chunk, mlp_memory_one_chunk, silu_grad, w1_step
from .naive import mlp_memory_naive

__all__ = [
    "mlp_memory",
    "mlp_memory_chunk",
    "mlp_memory_naive",
    "mlp_memory_one_chunk",
    "resolve_impl",
    "silu_grad",
    "w1_step",
]


def mlp_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s2: torch.Tensor,
    s1: torch.Tensor,
    *,
    chunk_size: int = 16,
    dgd: bool = True,
    self_modifying: bool = False,
    stop_grad_writes: bool = False,
    impl: str = "auto",
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatch; returns (o [B, G, T, d], S2 after, S1 after).

    Head-major: q, k, v [B, G, T, d]; eta, alpha [B, G, T]; s2 [B, G, d, h]; s1 [B, G, h, d].
    v are the targets v̂, or with self_modifying the values v whose targets M(v) are read
    at each chunk's start weights. chunk_size is semantic (gradients at chunk start);
    HOPE passes its chunk and chunk_size = T. stop_grad_writes detaches what is written.
    impl: "naive", "chunk", "triton" (CUDA, or CPU under TRITON_INTERPRET=1; fp32 compute)
    or "auto" ("triton" for CUDA fp32/bf16/fp16 tensors when triton is installed, else
    "chunk"; CLBENCH_KERNELS=reference|triton overrides it, see `dgd_rule.resolve_impl`).
    check_values=False skips the NaN/inf and gate-range scans (shapes are still checked).
    """
    impl = resolve_impl(impl, q)
    flags = {
        "chunk_size": chunk_size,
        "dgd": dgd,
        "self_modifying": self_modifying,
        "stop_grad_writes": stop_grad_writes,
    }
    if impl == "naive":
        return mlp_memory_naive(q, k, v, eta, alpha, s2, s1, **flags)
    if impl == "triton":
        from .triton import mlp_memory_triton

        return mlp_memory_triton(q, k, v, eta, alpha, s2, s1, **flags, check_values=check_values)
    return mlp_memory_chunk(q, k, v, eta, alpha, s2, s1, **flags, check_values=check_values)
