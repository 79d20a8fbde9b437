"""Token-by-token references of the DGD rule with momentum: the ground truth of chunk.py.

Head-major layout as HOPE's memories use it: q, k [B, G, C, K]; w [B, G, C, V];
eta, alpha [B, G, C]; states s0, m0 [B, G, K, V] (S = Mᵀ). Reads are read before write.
"""

from __future__ import annotations

import torch


def dgd_momentum_naive(q, k, w, eta, alpha, mu, s0, m0, *, dgd: bool = True):
    """Titans-form momentum (nested_learning.md §3.2): the forget gate acts outside the momentum.

        u_t = eta_t (w_t - S_{t-1}ᵀ k_t)  [DGD]   or   eta_t w_t
        m_t = mu_t m_{t-1} + k_t u_tᵀ               (momentum over the DGD step, gate mu_t per token)
        S_t = alpha_t S_{t-1} + m_t                 (retention outside the momentum)
        o_t = S_{t-1}ᵀ q_t

    mu: [B, G, C]. With mu = 0 this is exactly the gated DGD rule of `clbench.kernels.dgd_rule`.
    Returns (o [B, G, C, V], S_C, m_C).
    """
    s, m, outputs = s0, m0, []
    for t in range(k.shape[2]):
        kt = k[:, :, t]
        outputs.append(torch.einsum("bgk,bgkv->bgv", q[:, :, t], s))
        u = w[:, :, t]
        if dgd:
            u = u - torch.einsum("bgk,bgkv->bgv", kt, s)
        u = eta[:, :, t, None] * u
        m = mu[:, :, t, None, None] * m + kt[..., :, None] * u[..., None, :]
        s = alpha[:, :, t, None, None] * s + m
    return torch.stack(outputs, dim=2), s, m


def inner_momentum_naive(q, k, w, eta, alpha, mu, s0, m0, *, dgd: bool = True):
    """The "inner" form (clbench's first momentum, kept as `momentum_form=inner`): the whole
    step of the rule, retention included, goes through a momentum with a static gate.

        delta_t = (alpha_t - 1) S_{t-1} - eta_t k_t k_tᵀ S_{t-1} [DGD] + eta_t k_t w_tᵀ
        m_t = mu m_{t-1} + delta_t,   S_t = S_{t-1} + m_t

    mu: [G], one learned gate per memory. Returns (o, S_C, m_C).
    """
    s, m, outputs = s0, m0, []
    mu = mu.view(1, -1, 1, 1)
    for t in range(k.shape[2]):
        kt, wt = k[:, :, t], w[:, :, t]
        outputs.append(torch.einsum("bgk,bgkv->bgv", q[:, :, t], s))
        a, e = alpha[:, :, t, None, None], eta[:, :, t, None, None]
        delta = (a - 1) * s + e * kt[..., :, None] * wt[..., None, :]
        if dgd:
            delta = delta - e * kt[..., :, None] * torch.einsum("bgk,bgkv->bgv", kt, s)[..., None, :]
        m = mu * m + delta
        s = s + m
    return torch.stack(outputs, dim=2), s, m
