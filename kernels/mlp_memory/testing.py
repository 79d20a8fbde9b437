"""Random, well-conditioned inputs for the MLP memory (tests and benchmarks share them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_inputs(
    B=2,
    G=2,
    T=11,
    d=5,
    h=12,
    *,
    seed=0,
    alpha_low=0.5,
    branch_scale=1.0,
    dtype=torch.float64,
    device="cpu",
):
    """(q, k, v, eta, alpha, s2, s1), head-major: l2-normalised q, k, v (as HOPE feeds them),
    eta in [0, 0.5), alpha in (alpha_low, 1], S2 ~ N(0, 1/d), S1 ~ N(0, branch_scale²/h).

    branch_scale = 1 makes the MLP branch silu(z S2) S1 as large as the skip z, so errors
    of the branch are not hidden behind the identity part of the output.
    """
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)

    q, k, v = unit(B, G, T, d), unit(B, G, T, d), unit(B, G, T, d)
    eta = 0.5 * torch.rand(B, G, T, generator=g, dtype=dtype)
    alpha = 1 - (1 - alpha_low) * torch.rand(B, G, T, generator=g, dtype=dtype)
    s2 = torch.randn(B, G, d, h, generator=g, dtype=dtype) / d**0.5
    s1 = torch.randn(B, G, h, d, generator=g, dtype=dtype) * branch_scale / h**0.5
    return tuple(x.to(device) for x in (q, k, v, eta, alpha, s2, s1))
