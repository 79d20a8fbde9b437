"""Token-by-token reference of the 2-layer MLP memory: the ground truth for the other paths.

Written from the semantics, not from `chunk.py` or HOPE's memory.py: explicit weights
per group, each token's inner gradient taken by `torch.func.grad` (no hand backprop) at
the snapshot of its chunk's start weights, then the update applied token by token
(state layout S2 = W2ᵀ [d, h], S1 = W1ᵀ [h, d]; M(z) = z + silu(z S2) S1):

    S2_t = alpha_t S2_{t-1} - eta_t k_t (k_tᵀ S2_{t-1}) [if dgd] - eta_t dL_t/dS2 (at the snapshot)
    S1_t = alpha_t S1_{t-1} - eta_t / max(1, ||a_t||²) dL_t/dS1 (at the snapshot)
    L_t = 1/2 ||M(k_t) - v̂_t||²,  a_t = silu(k_t S2_snapshot),  v̂_t = M_snapshot(v_t) if
    self-modifying else v_t;  o_t = M_{t-1}(q_t) (read before write).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from .checks import check_inputs


def _memory(s2: torch.Tensor, s1: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """M(z) for one group: z [d] or [n, d], s2 [d, h], s1 [h, d]."""
    return z + F.silu(z @ s2) @ s1


def _inner_loss(s2, s1, key, target):
    return 0.5 * (_memory(s2, s1, key) - target).pow(2).sum()


# Per (batch, group) gradients of one token's loss w.r.t. both weights.
_token_grads = vmap(vmap(grad(_inner_loss, argnums=(0, 1))))
_apply = vmap(vmap(_memory))


def mlp_memory_naive(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head-major shapes of `mlp_memory_chunk`; returns (o [B, G, T, d], S2_T, S1_T).
    chunk_size is semantic: gradients are taken at the start weights of each chunk.
    stop_grad_writes detaches what each token writes (its key, gradients, steps and
    retention); the states themselves stay differentiable."""
    check_inputs(q, k, v, eta, alpha, s2, s1, chunk_size=chunk_size)
    outputs = []
    for t in range(q.shape[2]):
        if t % chunk_size == 0:
            snap2, snap1 = s2, s1
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # [B, G, d]
        e, r = eta[:, :, t, None, None], alpha[:, :, t, None, None]
        outputs.append(_apply(s2, s1, q_t))  # read before write
        target = _apply(snap2, snap1, v_t) if self_modifying else v_t
        g2, g1 = _token_grads(snap2, snap1, k_t, target)
        hidden = F.silu(torch.einsum("bgd,bgdh->bgh", k_t, snap2))
        e1 = e / torch.clamp((hidden * hidden).sum(-1), min=1.0)[..., None, None]
        if stop_grad_writes:
            k_t, g2, g1, e, e1, r = (x.detach() for x in (k_t, g2, g1, e, e1, r))
        new_s2 = r * s2 - e * g2
        if dgd:
            k_s2 = torch.einsum("bgd,bgdh->bgh", k_t, s2)  # k_tᵀ S2_{t-1}
            new_s2 = new_s2 - e * k_t[..., :, None] * k_s2[..., None, :]
        s2, s1 = new_s2, r * s1 - e1 * g1
    return torch.stack(outputs, dim=2), s2, s1
