"""Token-by-token reference for the gated DGD rule: the ground truth for every other path."""

from __future__ import annotations

import torch

from .checks import check_inputs


def dgd_rule_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    *,
    dgd: bool = True,
    read_before_write: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the gated DGD recurrence one token at a time.

    Shapes: q, k [B, T, H, K]; w [B, T, H, V]; eta, alpha [B, T, H]; s0 [B, H, K, V]
    (fla layout: the state S is the transposed memory matrix, S = Mᵀ).

        S_t = alpha_t S_{t-1} - eta_t k_t (k_tᵀ S_{t-1})   (DGD term, only if dgd)
              + eta_t k_t w_tᵀ
        o_t = S_{t-1}ᵀ q_t   if read_before_write else   S_tᵀ q_t

    Returns (o [B, T, H, V], S_T [B, H, K, V]).
    """
    check_inputs(q, k, w, eta, alpha, s0)
    state = s0
    outputs = []
    for t in range(q.shape[1]):
        q_t, k_t, w_t = q[:, t], k[:, t], w[:, t]  # [B, H, K], [B, H, K], [B, H, V]
        eta_t = eta[:, t, :, None, None]
        alpha_t = alpha[:, t, :, None, None]
        if read_before_write:
            outputs.append(torch.einsum("bhkv,bhk->bhv", state, q_t))
        new_state = alpha_t * state + eta_t * torch.einsum("bhk,bhv->bhkv", k_t, w_t)
        if dgd:
            read_k = torch.einsum("bhk,bhkv->bhv", k_t, state)  # k_tᵀ S_{t-1}
            new_state = new_state - eta_t * torch.einsum("bhk,bhv->bhkv", k_t, read_k)
        state = new_state
        if not read_before_write:
            outputs.append(torch.einsum("bhkv,bhk->bhv", state, q_t))
    return torch.stack(outputs, dim=1), state
