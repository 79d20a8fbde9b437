"""Random, well-conditioned inputs for the gated DGD rule (tests and benchmarks share them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_inputs(B=2, T=7, H=2, K=4, V=3, *, seed=0, alpha_low=0.5, dtype=torch.float64, device="cpu"):
    """(q, k, w, eta, alpha, s0): alpha in (alpha_low, 1], eta in [0, 0.5), l2-normalised k.

    Normalised keys and eta < 1 keep every DGD factor alpha - eta k k^T contractive, so
    long sequences stay finite and errors between implementations stay comparable.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    w = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    eta = 0.5 * torch.rand(B, T, H, generator=g, dtype=dtype)
    alpha = 1 - (1 - alpha_low) * torch.rand(B, T, H, generator=g, dtype=dtype)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return tuple(x.to(device) for x in (q, k, w, eta, alpha, s0))
