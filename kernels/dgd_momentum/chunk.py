r"""Chunked closed form of the DGD rule with Titans-form momentum (exact for any chunk length).

Recurrence (naive.py, per batch and memory, S = Mᵀ of shape [K, V]):

    u_t = eta_t (w_t - S_{t-1}ᵀ k_t) [DGD] or eta_t w_t,   m_t = mu_t m_{t-1} + k_t u_tᵀ,
    S_t = alpha_t S_{t-1} + m_t

nested_learning.md §9.2 expects no closed form for DGD with momentum. In this form there is
one: the gates are scalars and every write is rank one along a key, so the DGD rule's
triangular solve (clbench.kernels.dgd_rule.chunk) carries over with momentum-aware weights.
For one chunk with start states S̄, m̄ and chunk-local products Γ_t = Π_{j<=t} alpha_j,
P_t = Π_{j<=t} mu_j:

    m_t = P_t m̄ + Σ_{i<=t} (P_t/P_i) k_i u_iᵀ
    S_t = Γ_t S̄ + F_t m̄ + Σ_{i<=t} G_{t,i} k_i u_iᵀ,
          F_t = Σ_{j<=t} (Γ_t/Γ_j) P_j,   G_{t,i} = Σ_{j=i..t} (Γ_t/Γ_j)(P_j/P_i)

so G = D_Γ D_P (two lower-triangular ratio matrices) and F = D_Γ P (§3.3b's coefficients).
With DGD, u_t needs S_{t-1}ᵀ k_t, which holds earlier u_i:

    (I + L) U = diag(eta) (W - diag(Γ_{t-1}) K S̄ - diag(F_{t-1}) K m̄),  L_{t,i} = eta_t G_{t-1,i} k_tᵀ k_i (i < t)

one unit-lower-triangular solve per chunk. Reads (before write):
o_t = Γ_{t-1} S̄ᵀ q_t + F_{t-1} m̄ᵀ q_t + Σ_{i<t} G_{t-1,i} (k_iᵀ q_t) u_i. With mu = 0, G = D_Γ
and F = 0: the DGD rule's closed form. Ratios come from log-space cumsums, masked before the
exp, so no entry can overflow.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def _inclusive_lower(c: int, device: torch.device) -> torch.Tensor:
    return torch.ones(c, c, dtype=torch.bool, device=device).tril()


def _ratios(log_cum: torch.Tensor) -> torch.Tensor:
    """exp(log_cum[t] - log_cum[i]) for i <= t, else 0: [.., C] -> [.., C, C]."""
    diff = log_cum[..., :, None] - log_cum[..., None, :]
    return diff.masked_fill(~_inclusive_lower(log_cum.shape[-1], log_cum.device), float("-inf")).exp()


def _previous_row(x: torch.Tensor) -> torch.Tensor:
    """Row t of the result is row t - 1 of x (row 0 is zero): quantities at S_{t-1}."""
    return F.pad(x[..., :-1, :], (0, 0, 1, 0))


def dgd_momentum_one_chunk(q, k, w, eta, alpha, mu, s0, m0, *, dgd: bool = True):
    """One chunk, head-major: q, k [B, G, C, K]; w [B, G, C, V]; eta, alpha, mu [B, G, C] (alpha,
    mu > 0); s0, m0 [B, G, K, V]. Returns (o [B, G, C, V], S_C, m_C), equal to `dgd_momentum_naive`."""
    log_gamma, log_p = torch.log(alpha).cumsum(-1), torch.log(mu).cumsum(-1)
    d_gamma = _ratios(log_gamma)  # Γ_t/Γ_j, j <= t
    g_full = d_gamma @ _ratios(log_p)  # G_{t,i}
    f_full = d_gamma @ log_p.exp()[..., None]  # F_t, [.., C, 1]
    g_prev, f_prev = _previous_row(g_full), _previous_row(f_full)
    gamma_prev = F.pad(log_gamma[..., :-1], (1, 0)).exp()[..., None]  # Γ_{t-1}
    eta_col = eta[..., None]
    if dgd:
        lower = eta_col * g_prev * (k @ k.transpose(-1, -2))  # strictly lower: g_prev is
        rhs = eta_col * (w - gamma_prev * (k @ s0) - f_prev * (k @ m0))
        u = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
    else:
        u = eta_col * w
    o = (gamma_prev * q) @ s0 + (f_prev * q) @ m0 + ((q @ k.transpose(-1, -2)) * g_prev) @ u
    s = log_gamma[..., -1:, None].exp() * s0 + f_full[..., -1:, :] * m0 \
        + (g_full[..., -1, :, None] * k).transpose(-1, -2) @ u
    m = log_p[..., -1:, None].exp() * m0 + ((log_p[..., -1:] - log_p).exp()[..., None] * k).transpose(-1, -2) @ u
    return o, s, m
