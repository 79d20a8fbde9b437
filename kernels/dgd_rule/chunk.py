r"""Chunked closed form of the gated DGD rule (pure PyTorch, exact for any chunk size).

Recurrence (per batch b and head h, fla layout S = Mᵀ of shape [K, V]):

    S_t = alpha_t S_{t-1} - eta_t k_t (k_tᵀ S_{t-1}) [only if dgd] + eta_t k_t w_tᵀ

Derivation, for one chunk with start state S̄ and chunk-local gate products
Γ_t = prod_{j<=t} alpha_j (Γ_0 = 1):

1. Write the update as a rank-1 write S_t = alpha_t S_{t-1} + k_t u_tᵀ with
   u_t = eta_t (w_t - S_{t-1}ᵀ k_t) if dgd else eta_t w_t. Unrolling,
   S_t = Γ_t S̄ + Σ_{i<=t} (Γ_t/Γ_i) k_i u_iᵀ.
2. With DGD, u_t depends on earlier u_i through S_{t-1}:
   u_t = eta_t (w_t - Γ_{t-1} S̄ᵀ k_t - Σ_{i<t} (Γ_{t-1}/Γ_i)(k_iᵀ k_t) u_i), i.e.
   (I + L) U = diag(eta) (W - diag(Γ_{t-1}) K S̄) with L strictly lower triangular,
   L_{t,i} = eta_t (Γ_{t-1}/Γ_i) k_tᵀ k_i: one unit-lower-triangular solve per chunk.
   The solve is linear in its right-hand side, so we split it (the WY/UT trick of
   fla's delta rule) into U = U_free - U_state S̄ with
   U_free = (I + L)⁻¹ diag(eta) W and U_state = (I + L)⁻¹ diag(eta Γ_{t-1}) K.
   Neither depends on S̄, so the solves for all chunks run as one batched call
   before the sequential pass; that pass then holds only matmuls over [B, H].
   Without DGD, L = 0 and U = diag(eta) W.
3. Outputs: read-before-write o_t = Γ_{t-1} S̄ᵀ q_t + Σ_{i<t} (Γ_{t-1}/Γ_i)(k_iᵀ q_t) u_i;
   read-after-write uses Γ_t and i <= t instead.
4. End-of-chunk state S_C = Γ_C S̄ + Σ_i (Γ_C/Γ_i) k_i u_iᵀ starts the next chunk.

Every ratio Γ_a/Γ_b is exp(log Γ_a - log Γ_b) from a cumsum of log alpha. Entries
outside the causal mask would have a positive exponent (they can overflow when alpha
is small), so they are set to -inf *before* the exp; gradients there are exactly 0.

Tail padding: if T is not a multiple of chunk_size, the last chunk is padded with
alpha = 1, eta = 0 and k = q = w = 0. Padded tokens write nothing (u = 0) and do not
decay the state, so the final state is unchanged; their outputs are trimmed off.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .checks import check_chunk_size, check_inputs


def dgd_rule_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    *,
    chunk_size: int = 16,
    dgd: bool = True,
    read_before_write: bool = True,
    return_chunk_states: bool = False,
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gated DGD rule, chunk by chunk; same semantics and shapes as `dgd_rule_naive`.

    chunk_size only tiles the computation: the result equals the token loop for any
    value. Returns (o [B, T, H, V], S_T [B, H, K, V]) and, with return_chunk_states,
    also the chunk-start states [B, NT, H, K, V] (NT = ceil(T / chunk_size); entry 0
    is s0). Differentiable with autograd w.r.t. every tensor input.
    check_values=False skips the value scans (NaN/inf, gate ranges; shapes are still
    checked): for callers in a hot loop that guarantee the ranges and check finiteness
    of their own results, as the HOPE layer does.
    """
    check_inputs(q, k, w, eta, alpha, s0, values=check_values)
    check_chunk_size(chunk_size)
    B, T, H, K = q.shape
    V = w.shape[-1]
    C = chunk_size
    NT = math.ceil(T / C)
    pad = NT * C - T

    # [B, T, H, *] -> [B, H, NT, C, *]; eta/alpha -> [B, H, NT, C].
    q_c, k_c, w_c = (_chunked(x, pad, NT, C) for x in (q, k, w))
    eta_c = _chunked(eta[..., None], pad, NT, C)[..., 0]
    alpha_c = _chunked(alpha[..., None], pad, NT, C, value=1.0)[..., 0]

    gates = chunk_gates(alpha_c)  # per chunk: Γ_{t-1}, Γ_{t-1}/Γ_i (i < t), Γ_C/Γ_i, Γ_C
    eta_col = eta_c[..., None]
    if dgd:
        lower = eta_col * gates.decay_prev * (k_c @ k_c.transpose(-1, -2))  # zero diagonal
        rhs = torch.cat([eta_col * w_c, eta_col * gates.gamma_prev * k_c], dim=-1)
        # unitriangular: the solver takes the diagonal as ones and never reads it.
        solved = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
        u_free, u_state = solved.split([V, K], dim=-1)
    else:
        u_free, u_state = eta_col * w_c, None

    if read_before_write:
        read_gamma, read_decay = gates.gamma_prev, gates.decay_prev
    else:
        log_gamma = torch.log(alpha_c).cumsum(-1)
        inclusive = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        read_gamma, read_decay = log_gamma.exp()[..., None], _masked_ratio(log_gamma, log_gamma, inclusive)
    q_state = read_gamma * q_c  # reads S̄ with weight Γ
    attn = (q_c @ k_c.transpose(-1, -2)) * read_decay  # [B, H, NT, C, C]
    gamma_end, k_end = gates.gamma_end, gates.end_ratio * k_c  # Γ_C and (Γ_C/Γ_i) k_i

    # Sequential pass over chunks; everything inside a chunk is a batched matmul.
    state = s0
    outputs, chunk_states = [], []
    for n in range(NT):
        chunk_states.append(state)
        u = u_free[:, :, n]
        if u_state is not None:
            u = u - u_state[:, :, n] @ state
        outputs.append(q_state[:, :, n] @ state + attn[:, :, n] @ u)
        state = gamma_end[:, :, n] * state + k_end[:, :, n].transpose(-1, -2) @ u

    o = torch.stack(outputs, dim=2).reshape(B, H, NT * C, V)[:, :, :T].transpose(1, 2)
    o = o.contiguous()
    if return_chunk_states:
        return o, state, torch.stack(chunk_states, dim=1)
    return o, state


def _chunked(
    x: torch.Tensor, pad: int, n_chunks: int, chunk: int, value: float = 0.0
) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, NT, C, D], padding T at the end with `value`."""
    B, _, H, D = x.shape
    if pad:  # F.pad copies even when there is nothing to add
        x = F.pad(x, (0, 0, 0, 0, 0, pad), value=value)
    return x.reshape(B, n_chunks, chunk, H, D).permute(0, 3, 1, 2, 4)


def _masked_ratio(
    log_rows: torch.Tensor, log_cols: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """exp(log_rows[t] - log_cols[i]) where mask[t, i], else 0 (masked before the exp)."""
    diff = log_rows[..., :, None] - log_cols[..., None, :]
    return diff.masked_fill(~mask, float("-inf")).exp()


class ChunkGates(NamedTuple):
    """The retention products of one chunk, shared by every write that uses the same alpha."""

    gamma_prev: torch.Tensor  # [B, H, C, 1]: Γ_{t-1}
    decay_prev: torch.Tensor  # [B, H, C, C]: Γ_{t-1}/Γ_i for i < t, else 0
    end_ratio: torch.Tensor  # [B, H, C, 1]: Γ_C/Γ_i
    gamma_end: torch.Tensor  # [B, H, 1, 1]: Γ_C


@functools.lru_cache(maxsize=64)
def _strictly_lower(C: int, device: torch.device) -> torch.Tensor:
    return torch.ones(C, C, dtype=torch.bool, device=device).tril(-1)


def chunk_gates(alpha: torch.Tensor) -> ChunkGates:
    """Gates of one chunk from alpha [B, H, C] (log space, masked before the exp)."""
    log_gamma = torch.log(alpha).cumsum(-1)  # log Γ_t
    log_gamma_prev = F.pad(log_gamma[..., :-1], (1, 0))  # log Γ_{t-1}, exact
    decay_prev = _masked_ratio(log_gamma_prev, log_gamma, _strictly_lower(alpha.shape[-1], alpha.device))
    return ChunkGates(
        gamma_prev=log_gamma_prev.exp()[..., None],
        decay_prev=decay_prev,
        end_ratio=(log_gamma[..., -1:] - log_gamma).exp()[..., None],
        gamma_end=log_gamma[..., -1].exp()[..., None, None],
    )


def dgd_rule_one_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    *,
    dgd: bool = True,
    gates: ChunkGates | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of the rule in head-major layout, read before write, without input checks.

    q, k: [B, H, C, K]; w: [B, H, C, V]; eta, alpha: [B, H, C]; s0: [B, H, K, V].
    Returns (o [B, H, C, V], S_C). The same closed form as `dgd_rule_chunk` with a single
    chunk, minus its layout changes, padding and value scans: the per-chunk body for a
    caller that recomputes its inputs at every chunk start (HOPE's memories, where w
    depends on the chunk-start state) and checks its own results. With the start state
    known, the right-hand side diag(eta)(W - diag(Γ_{t-1}) K S̄) is formed directly (one
    solve with V columns). `gates` (from `chunk_gates(alpha)`) may be passed when several
    writes share alpha.
    """
    g = gates if gates is not None else chunk_gates(alpha)
    eta_col = eta[..., None]
    if dgd:
        lower = eta_col * g.decay_prev * (k @ k.transpose(-1, -2))  # zero diagonal
        rhs = eta_col * (w - g.gamma_prev * (k @ s0))
        # unitriangular: the solver takes the diagonal as ones and never reads it.
        u = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
    else:
        u = eta_col * w
    o = (g.gamma_prev * q) @ s0 + ((q @ k.transpose(-1, -2)) * g.decay_prev) @ u
    state = g.gamma_end * s0 + (g.end_ratio * k).transpose(-1, -2) @ u
    return o, state
