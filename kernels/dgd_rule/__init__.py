"""Gated DGD rule: the linear-memory core op of HOPE's memories (kernel spec K1).

    S_t = alpha_t S_{t-1} - eta_t k_t (k_tᵀ S_{t-1}) [if dgd] + eta_t k_t w_tᵀ
    o_t = S_{t-1}ᵀ q_t (read_before_write) or S_tᵀ q_t

`naive.py` is the token-loop reference, `chunk.py` the chunked closed form,
`triton.py` the Triton forward kernel and `triton_backward.py` its backward kernel
(`dgd_rule_triton(..., backward="recompute")` recomputes through `chunk.py` instead). The
chunk-start correction of HOPE (w = v̂ - S̄ᵀ k) is not part of the op: callers pass
the already-corrected w.

`triton.py` is imported lazily, on the first call that picks it: TRITON_INTERPRET
is read when its kernel is decorated, so importing this package must not fix it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .chunk import ChunkGates, chunk_gates, dgd_rule_chunk, dgd_rule_one_chunk
from .naive import dgd_rule_naive

__all__ = [
    "dgd_rule",
    "dgd_rule_step",
    "dgd_rule_chunk",
    "dgd_rule_naive",
    "dgd_rule_one_chunk",
    "chunk_gates",
    "ChunkGates",
]

IMPLS = ("auto", "naive", "chunk", "triton")
KERNELS_ENV = "CLBENCH_KERNELS"  # overrides impl="auto": "auto", "triton" or "reference"
KERNELS_ENV_VALUES = ("auto", "triton", "reference")


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

    impl: "naive" (token loop), "chunk" (chunked PyTorch), "triton" (Triton forward and
    backward kernels; CUDA tensors, or CPU under TRITON_INTERPRET=1)
    or "auto": "triton" for CUDA tensors when triton is installed (fp64 stays on
    "chunk": the kernel computes in fp32), else "chunk". The environment variable
    CLBENCH_KERNELS overrides "auto": "triton" forces the kernel, "reference" forces
    "chunk" (for debugging), "auto" (or unset) keeps the rule above.
    chunk_size only tiles the computation and is ignored by "naive".
    check_values=False skips the NaN/inf and gate-range scans (see `dgd_rule_chunk`).
    """
    impl = resolve_impl(impl, q)
    if impl == "naive":
        return dgd_rule_naive(q, k, w, eta, alpha, s0, dgd=dgd, read_before_write=read_before_write)
    flags = {"dgd": dgd, "read_before_write": read_before_write, "chunk_size": chunk_size}
    if impl == "triton":
        from .triton import dgd_rule_triton

        return dgd_rule_triton(q, k, w, eta, alpha, s0, **flags, check_values=check_values)
    return dgd_rule_chunk(q, k, w, eta, alpha, s0, **flags, check_values=check_values)


def dgd_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    *,
    dgd: bool = True,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One semantic chunk in HOPE's head-major layout, read before write, dispatched.

    Shapes and semantics of `dgd_rule_one_chunk` (q, k: [B, H, C, K]; w: [B, H, C, V];
    eta, alpha: [B, H, C]; s0: [B, H, K, V]); returns (o [B, H, C, V], S_C). HOPE's
    memories call this once per chunk because their next chunk's inputs are read from
    this chunk's end state. No value scans: the caller keeps the gates in range and
    checks its own results. The Triton kernel takes the token-major layout, so its
    path transposes in and out (the wrapper makes the inputs contiguous).
    """
    impl = resolve_impl(impl, q)
    if impl == "chunk":
        return dgd_rule_one_chunk(q, k, w, eta, alpha, s0, dgd=dgd)
    token_major = [x.transpose(1, 2) for x in (q, k, w, eta, alpha)]
    if impl == "naive":
        o, s = dgd_rule_naive(*token_major, s0, dgd=dgd, read_before_write=True)
    else:
        from .triton import dgd_rule_triton

        o, s = dgd_rule_triton(
            *token_major, s0, dgd=dgd, read_before_write=True, chunk_size=q.shape[2], check_values=False
        )
    return o.transpose(1, 2), s


def resolve_impl(impl: str, q: torch.Tensor) -> str:
    """The implementation `dgd_rule` runs for `impl` and tensors like q: "naive", "chunk" or "triton"."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    if impl != "auto":
        return impl
    choice = os.environ.get(KERNELS_ENV, "auto") or "auto"
    if choice not in KERNELS_ENV_VALUES:
        raise ValueError(
            f"{KERNELS_ENV} must be one of {', '.join(map(repr, KERNELS_ENV_VALUES))}; got {choice!r}"
        )
    if choice == "reference":
        return "chunk"
    if choice == "triton":
        return "triton"
    on_gpu = q.is_cuda and q.dtype != torch.float64
    return "triton" if on_gpu and _triton_installed() else "chunk"


def _triton_installed() -> bool:
    # find_spec instead of an import: importing triton is slow and not needed to decide.
    return importlib.util.find_spec("triton") is not None
