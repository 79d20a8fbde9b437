"""Input validation shared by every `mlp_memory` implementation (head-major layout).

Gate ranges as for `dgd_rule`, checked by the same code (`kernels/common.py`): alpha in (0, 1], eta >= 0.
"""

from __future__ import annotations

import torch

from ..common import check_finite_and_gates, check_same_float_tensors
from ..dgd_rule.checks import check_chunk_size


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s2: torch.Tensor,
    s1: torch.Tensor,
    *,
    chunk_size: int,
    values: bool = True,
) -> None:
    """Raise ValueError naming the argument if shapes, dtypes or (if `values`) values are invalid."""
    named = {"q": q, "k": k, "v": v, "eta": eta, "alpha": alpha, "s2": s2, "s1": s1}
    check_same_float_tensors(named)
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, G, T, d]; got {tuple(q.shape)}")
    B, G, T, d = q.shape
    if T < 1:
        raise ValueError(f"q must hold at least one token; got shape {tuple(q.shape)}")
    h = s2.shape[-1] if s2.dim() == 4 else -1
    expected = {
        "k": (B, G, T, d),
        "v": (B, G, T, d),
        "eta": (B, G, T),
        "alpha": (B, G, T),
        "s2": (B, G, d, h),
        "s1": (B, G, h, d),
    }
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            wanted = "[B, G, d, h]" if name == "s2" else str(shape)
            raise ValueError(
                f"{name} must have shape {wanted} (from q: B={B}, G={G}, T={T}, d={d}"
                f"{f', and h={h} from s2' if name == 's1' else ''}); got {tuple(named[name].shape)}"
            )
    check_chunk_size(chunk_size)
    if values:
        check_finite_and_gates(named)
