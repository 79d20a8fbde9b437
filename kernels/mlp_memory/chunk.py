r"""Chunked PyTorch path of the 2-layer MLP memory (kernel spec K2, DGD variant, no momentum).

Per group g (memory x head), state S2 = W2ᵀ [d, h] and S1 = W1ᵀ [h, d], memory
M(z) = z + silu(z S2) S1. One chunk with keys k, queries q [n, d], targets v̂ (or, for a
self-modifying memory, values v with targets M(v) at the chunk-start state), eta, alpha [n]:

1. forward at the chunk-start weights: z = k S2, a = silu(z), err = k + a S1 - v̂;
2. hand backprop of 1/2 ||M(k) - v̂||²: hidden_err = (err S1ᵀ) ⊙ silu'(z), so each token's
   gradient is rank one: k hidden_errᵀ for S2, a errᵀ for S1;
3. S2 learns by the gated DGD rule (keys k, values -hidden_err, DGD term per the flag,
   queries q -> reads z_q), S1 by the same rule without DGD (keys a, values -err, step
   eta / max(1, ||a||²), queries silu(z_q) -> reads h_q), both read before write;
4. output o = q + h_q = M_{t-1}(q_t).

Both writes are `clbench.kernels.dgd_rule.dgd_rule_one_chunk` closed forms and share the
chunk's retention gates. `mlp_memory_one_chunk` is the body HOPE's `MLPMemory` runs per
chunk (operation for operation its former code, so results did not move by a bit);
`mlp_memory_chunk` walks the chunks of a longer sequence in order, each chunk's
gradients taken at its own start weights (the chunk size is semantic here, not a tile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dgd_rule import chunk_gates, dgd_rule_one_chunk
from .checks import check_inputs


def silu_grad(z: torch.Tensor) -> torch.Tensor:
    """d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z)."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def w1_step(eta: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """S1's step eta / max(1, ||a||²): a normalised-LMS step (see `memory.w1_step`, why)."""
    return eta / hidden.pow(2).sum(-1).clamp_min(1.0)


def mlp_memory_one_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s2: torch.Tensor,
    s1: torch.Tensor,
    *,
    dgd: bool = True,
    self_modifying: bool = False,
    stop_grad_writes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk, head-major, no input checks: q, k, v [B, G, n, d]; eta, alpha [B, G, n];
    s2 [B, G, d, h]; s1 [B, G, h, d]. v are targets, or values whose targets are M(v) at
    the start state if self_modifying. Returns (o [B, G, n, d], S2 after, S1 after).

    stop_grad_writes detaches what is written (keys, values, steps, gates of both
    writes); the states and the reads stay differentiable.
    """
    if self_modifying:
        # One forward pass over keys and values stacked: M(k) for the error, M(v) as targets.
        n, both = k.shape[-2], torch.cat([k, v], dim=-2)
        z_both = both @ s2
        a_both = F.silu(z_both)
        out = both + a_both @ s1
        z, a, err = z_both[..., :n, :], a_both[..., :n, :], out[..., :n, :] - out[..., n:, :]
    else:
        z = k @ s2
        a = F.silu(z)
        err = k + a @ s1 - v
    hidden_err = (err @ s1.transpose(-1, -2)) * silu_grad(z)
    w2_step, w1_eta = eta, w1_step(eta, a)
    w2_values, w1_values = -hidden_err, -err
    if stop_grad_writes:
        k, a, alpha = k.detach(), a.detach(), alpha.detach()
        w2_step, w1_eta = w2_step.detach(), w1_eta.detach()
        w2_values, w1_values = w2_values.detach(), w1_values.detach()
    gates = chunk_gates(alpha)  # shared by both writes
    z_q, s2 = dgd_rule_one_chunk(q, k, w2_values, w2_step, alpha, s2, dgd=dgd, gates=gates)
    h_q, s1 = dgd_rule_one_chunk(
        F.silu(z_q), a, w1_values, w1_eta, alpha, s1, dgd=False, gates=gates
    )
    return q + h_q, s2, s1


def mlp_memory_chunk(
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
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T tokens in chunks of `chunk_size` (the last one shorter if T is no multiple),
    sequentially; shapes and semantics of `mlp_memory_one_chunk` with n = T.
    Differentiable with autograd w.r.t. every tensor input."""
    check_inputs(q, k, v, eta, alpha, s2, s1, chunk_size=chunk_size, values=check_values)
    flags = {"dgd": dgd, "self_modifying": self_modifying, "stop_grad_writes": stop_grad_writes}
    T = q.shape[2]
    if chunk_size >= T:  # one chunk: the tensors as they are, no slicing
        return mlp_memory_one_chunk(q, k, v, eta, alpha, s2, s1, **flags)
    outputs = []
    for start in range(0, T, chunk_size):
        c = slice(start, start + chunk_size)
        o, s2, s1 = mlp_memory_one_chunk(
            q[:, :, c], k[:, :, c], v[:, :, c], eta[:, :, c], alpha[:, :, c], s2, s1, **flags
        )
        outputs.append(o)
    return torch.cat(outputs, dim=2), s2, s1
