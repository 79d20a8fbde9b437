"""DGD rule with momentum: the chunk op of HOPE's memories when `model.momentum` is on.

    Titans form (default): u_t = eta_t (w_t - S_{t-1}ᵀ k_t), m_t = mu_t m_{t-1} + k_t u_tᵀ,
                           S_t = alpha_t S_{t-1} + m_t
    inner form (option):   m_t = mu m_{t-1} + [the whole DGD step, retention included], S_t = S_{t-1} + m_t

`naive.py` holds both token loops (the references), `chunk.py` the Titans form's closed form
(one triangular solve per chunk, like the DGD rule's). The inner form has only its token loop.
There is no Triton kernel for either yet: "auto" runs the chunked PyTorch form on every
device, and asking for Triton is refused by the layer's options.
"""

from __future__ import annotations

from .chunk import dgd_momentum_one_chunk
from .naive import dgd_momentum_naive, inner_momentum_naive

__all__ = ["dgd_momentum_step", "dgd_momentum_one_chunk", "dgd_momentum_naive", "inner_momentum_naive"]

IMPLS = ("auto", "chunk", "naive")


def dgd_momentum_step(q, k, w, eta, alpha, mu, s0, m0, *, dgd: bool = True, impl: str = "auto"):
    """One chunk of the Titans form, head-major, read before write; returns (o, S_C, m_C).
    impl: "chunk" (closed form; what "auto" runs) or "naive" (token loop)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    fn = dgd_momentum_naive if impl == "naive" else dgd_momentum_one_chunk
    return fn(q, k, w, eta, alpha, mu, s0, m0, dgd=dgd)
