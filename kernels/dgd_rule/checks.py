"""Input validation shared by every `dgd_rule` implementation.

Bad gates are rejected instead of clamped: a retention alpha <= 0 has no
logarithm (the chunked form works in log space) and alpha > 1 or eta < 0 make
the memory grow without bound, which is always a caller bug.
"""

from __future__ import annotations

import torch

from ..common import check_finite_and_gates, check_same_float_tensors


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    values: bool = True,
) -> None:
    """Raise ValueError naming the argument if shapes, dtypes or (if `values`) values are invalid."""
    named = {"q": q, "k": k, "w": w, "eta": eta, "alpha": alpha, "s0": s0}
    check_same_float_tensors(named)

    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, T, H, K]; got {tuple(q.shape)}")
    B, T, H, K = q.shape
    if T < 1:
        raise ValueError(f"q must hold at least one token; got shape {tuple(q.shape)}")
    V = w.shape[-1] if w.dim() == 4 else -1
    expected = {
        "k": (B, T, H, K),
        "w": (B, T, H, V),
        "eta": (B, T, H),
        "alpha": (B, T, H),
        "s0": (B, H, K, V),
    }
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            wanted = "[B, T, H, V]" if name == "w" else str(shape)
            raise ValueError(
                f"{name} must have shape {wanted} (from q: B={B}, T={T}, H={H}, K={K}); "
                f"got {tuple(named[name].shape)}"
            )

    if values:
        check_finite_and_gates(named)


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
