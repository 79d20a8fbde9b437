r"""Triton backward kernel for the gated DGD rule (kernel K1), derived by hand.

One program per (b, h) walks the chunks in reverse. It carries dS, the gradient of the
loss w.r.t. the state at the end of the current chunk (the start of the next one; at
first the incoming grad of S_T, or 0), reloads the chunk-start state S̄ that the forward
stored, recomputes the chunk's intermediates from it and writes dq, dk, dw, deta,
dalpha for the chunk's tokens; after chunk 0, dS is ds0.

Forward of one chunk (notation of `chunk.py`; rows t, i of the chunk, log Γ the
in-chunk cumulative sum of log alpha, Γ' = Γ_{t-1}, D_{ti} = Γ_{t-1}/Γ_i for i < t):

    X   = W - diag(Γ') K S̄                    (the DGD target)
    L   = diag(eta) (D ⊙ K Kᵀ)                (strictly lower)
    U   = (I + L)⁻¹ diag(eta) X               with DGD, else U = diag(eta) W
    A   = (Q Kᵀ) ⊙ R                          R = D (read before write) or Γ_t/Γ_i, i <= t
    O   = diag(r) Q S̄ + A U                   r = Γ' (read before write) or Γ
    S_C = Γ_C S̄ + Eᵀ U                        E = diag(Γ_C/Γ_i) K

Reverse mode, given dO and dS = dS_C:

    dU  = Aᵀ dO + E dS
    dA  = dO Uᵀ;  dQ = (dA ⊙ R) K + diag(r) dO S̄ᵀ;  dK ∋ (dA ⊙ R)ᵀ Q
    dE  = U dSᵀ;  dK ∋ diag(Γ_C/Γ_i) dE
    dS̄  = Γ_C dS + (diag(r) Q)ᵀ dO  [+ Kᵀ dKS below]

Without DGD, dW = diag(eta) dU and deta_t = <dU_t, W_t>. With DGD, U solves a
unit-lower-triangular system, so its adjoint solves the transposed (unit upper) one:

    (I + L)ᵀ dRhs = dU                        (backward substitution, last row first)
    dL  = -dRhs Uᵀ (strictly lower part)       dW = diag(eta) dRhs
    deta_t = <dRhs_t, X_t> + Σ_i dL_{ti} D_{ti} (K Kᵀ)_{ti}
    dKS = -diag(eta Γ') dRhs:  dK ∋ dKS S̄ᵀ,  dS̄ ∋ Kᵀ dKS
    d(K Kᵀ) = dL ⊙ diag(eta) D:  dK ∋ (d(KKᵀ) + d(KKᵀ)ᵀ) K

Gates. Every gate is exp of a difference of log Γ's, so each gradient is first taken
w.r.t. log Γ_t (dG_t), log Γ_{t-1} (dG'_t) and log Γ_C (dG_C): a factor
exp(a - b) with upstream grad g and value f gives +g f to a and -g f to b. From the
read weights r (+ to dG' or dG), the read ratios R (rows +, columns -), E (dG_C +,
dG_i -), Γ_C S̄ (dG_C ∋ Γ_C <dS, S̄>) and, with DGD, diag(Γ') in X
(dG'_t ∋ <dKS_t, (K S̄)_t>) and D in L (rows +, columns - of dL ⊙ L). Since
log Γ_t = Σ_{j<=t} log alpha_j, log Γ_{t-1} = Σ_{j<t} log alpha_j and log Γ_C sums the
whole chunk, d log alpha_j = Σ_{t>=j} dG_t + Σ_{t>j} dG'_t + dG_C (reverse cumulative
sums), and dalpha = d log alpha / alpha. Padded tail tokens (alpha = 1, eta = 0,
zero vectors, no output gradient) contribute nothing and their gradients are not stored.

All in fp32 with "ieee" dots; the test compares every input gradient with autograd
through `dgd_rule_chunk` under the interpreter (relative-norm error < 1e-4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton import _chunk_log_gates, _load_chunk, _read_gates, _solve_unit_lower


# fmt: off
@triton.jit
def _dgd_rule_bwd_kernel(
    q, k, w, eta, alpha, chunk_states,  # forward inputs (contiguous) and fp32 chunk-start states
    grad_o, grad_s,  # incoming gradients [B,T,H,V], [B,H,K,V] (read only if HAS_GRAD_*)
    dq, dk, dw, deta, dalpha, ds0,  # outputs, shaped as the inputs
    T, H, K, V, NT,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DGD: tl.constexpr,
    READ_BEFORE_WRITE: tl.constexpr,
    HAS_GRAD_O: tl.constexpr,
    HAS_GRAD_S: tl.constexpr,
):
    # fmt: on
    bh = tl.program_id(0).to(tl.int64)  # = b * H + h; int64 so large offsets do not wrap
    b = bh // H
    h = bh % H
    rows = tl.arange(0, BT)
    cols_k = tl.arange(0, BK)
    cols_v = tl.arange(0, BV)
    mask_k = cols_k < K
    mask_v = cols_v < V
    kv_offs = cols_k[:, None] * V + cols_v[None, :]
    kv_mask = mask_k[:, None] & mask_v[None, :]
    later_or_same = rows[:, None] <= rows[None, :]  # [j, t]: t >= j, for reverse cumsums
    later = rows[:, None] < rows[None, :]  # t > j

    if HAS_GRAD_S:
        d_state = tl.load(grad_s + bh * K * V + kv_offs, mask=kv_mask, other=0.0).to(tl.float32)
    else:
        d_state = tl.zeros([BK, BV], dtype=tl.float32)
    for step in range(NT):
        n = NT - 1 - step
        state = tl.load(chunk_states + ((b * NT + n) * H + h) * K * V + kv_offs, mask=kv_mask, other=0.0)
        t = n * BT + rows
        mask_t = t < T
        token = (b * T + t) * H + h  # row index into the [B, T, H] layout
        qk_offs = token[:, None] * K + cols_k[None, :]
        qk_mask = mask_t[:, None] & mask_k[None, :]
        v_offs = token[:, None] * V + cols_v[None, :]
        v_mask = mask_t[:, None] & mask_v[None, :]
        q_c, k_c, w_c, eta_c, alpha_c = _load_chunk(
            q, k, w, eta, alpha, token, mask_t, cols_k, cols_v, mask_k, mask_v, K, V
        )
        if HAS_GRAD_O:
            d_o = tl.load(grad_o + v_offs, mask=v_mask, other=0.0).to(tl.float32)
        else:
            d_o = tl.zeros([BT, BV], dtype=tl.float32)

        # Recompute the forward of this chunk from S̄.
        log_gamma, log_gamma_prev, log_gamma_end, decay_prev = _chunk_log_gates(alpha_c, rows, BT)
        gamma_prev = tl.exp(log_gamma_prev)
        if DGD:
            k_state = tl.dot(k_c, state, input_precision="ieee")  # K S̄
            target = w_c - gamma_prev[:, None] * k_state  # X
            decay_kk = decay_prev * tl.dot(k_c, tl.trans(k_c), input_precision="ieee")
            lower = eta_c[:, None] * decay_kk  # L
            u = _solve_unit_lower(lower, eta_c[:, None] * target, rows, BT, BV)
        else:
            u = eta_c[:, None] * w_c
        read_gamma, read_decay = _read_gates(log_gamma, log_gamma_prev, decay_prev, rows, READ_BEFORE_WRITE)
        qk = tl.dot(q_c, tl.trans(k_c), input_precision="ieee")
        attn = qk * read_decay
        end_ratio = tl.exp(log_gamma_end - log_gamma)  # Γ_C/Γ_i
        gamma_end = tl.exp(log_gamma_end)

        # Through the reads O and the end state S_C.
        d_u = tl.dot(tl.trans(attn), d_o, input_precision="ieee")
        d_u += tl.dot(end_ratio[:, None] * k_c, d_state, input_precision="ieee")
        d_qk = tl.dot(d_o, tl.trans(u), input_precision="ieee") * read_decay  # dA ⊙ R
        d_o_state = tl.dot(d_o, tl.trans(state), input_precision="ieee")  # dO S̄ᵀ
        dq_c = tl.dot(d_qk, k_c, input_precision="ieee") + read_gamma[:, None] * d_o_state
        d_k_end = tl.dot(u, tl.trans(d_state), input_precision="ieee")  # dE
        dk_c = tl.dot(tl.trans(d_qk), q_c, input_precision="ieee") + end_ratio[:, None] * d_k_end

        # Log-gate gradients: dG (log Γ_t), dG' (log Γ_{t-1}), dG_C (log Γ_C).
        d_log_read_gamma = read_gamma * tl.sum(q_c * d_o_state, axis=1)
        d_log_read_decay = d_qk * qk
        d_log_end_ratio = end_ratio * tl.sum(k_c * d_k_end, axis=1)
        d_gamma_end = gamma_end * tl.sum(tl.sum(d_state * state, axis=1), axis=0)
        d_gamma_end += tl.sum(d_log_end_ratio, axis=0)
        # dS moves to the chunk start (in place: its last use was above).
        d_state = gamma_end * d_state
        d_state += tl.dot(tl.trans(read_gamma[:, None] * q_c), d_o, input_precision="ieee")
        d_gamma = -d_log_end_ratio - tl.sum(d_log_read_decay, axis=0)
        if READ_BEFORE_WRITE:
            d_gamma_prev = d_log_read_gamma + tl.sum(d_log_read_decay, axis=1)
        else:
            d_gamma += d_log_read_gamma + tl.sum(d_log_read_decay, axis=1)
            d_gamma_prev = tl.zeros([BT], dtype=tl.float32)

        # Through U: the transposed solve, then its right-hand side and L.
        if DGD:
            d_rhs = _solve_unit_upper_transposed(lower, d_u, rows, BT, BV)
            d_lower = -tl.dot(d_rhs, tl.trans(u), input_precision="ieee")
            dw_c = eta_c[:, None] * d_rhs
            deta_c = tl.sum(d_rhs * target, axis=1) + tl.sum(d_lower * decay_kk, axis=1)
            d_k_state = -(eta_c * gamma_prev)[:, None] * d_rhs
            dk_c += tl.dot(d_k_state, tl.trans(state), input_precision="ieee")
            d_state += tl.dot(tl.trans(k_c), d_k_state, input_precision="ieee")
            d_gamma_prev += tl.sum(d_k_state * k_state, axis=1)
            d_log_decay = d_lower * lower  # D is 0 off the strict lower triangle
            d_gamma_prev += tl.sum(d_log_decay, axis=1)
            d_gamma -= tl.sum(d_log_decay, axis=0)
            d_kk = d_lower * eta_c[:, None] * decay_prev
            dk_c += tl.dot(d_kk + tl.trans(d_kk), k_c, input_precision="ieee")
        else:
            dw_c = eta_c[:, None] * d_u
            deta_c = tl.sum(d_u * w_c, axis=1)

        # log Γ_t sums log alpha_j for j <= t, log Γ_{t-1} for j < t, log Γ_C all j.
        d_log_alpha = tl.sum(tl.where(later_or_same, d_gamma[None, :], 0.0), axis=1)
        d_log_alpha += tl.sum(tl.where(later, d_gamma_prev[None, :], 0.0), axis=1)
        d_log_alpha += d_gamma_end
        tl.store(dq + qk_offs, dq_c.to(dq.dtype.element_ty), mask=qk_mask)
        tl.store(dk + qk_offs, dk_c.to(dk.dtype.element_ty), mask=qk_mask)
        tl.store(dw + v_offs, dw_c.to(dw.dtype.element_ty), mask=v_mask)
        tl.store(deta + token, deta_c.to(deta.dtype.element_ty), mask=mask_t)
        tl.store(dalpha + token, (d_log_alpha / alpha_c).to(dalpha.dtype.element_ty), mask=mask_t)

    tl.store(ds0 + bh * K * V + kv_offs, d_state.to(ds0.dtype.element_ty), mask=kv_mask)


@triton.jit
def _solve_unit_upper_transposed(lower, rhs, rows, BT: tl.constexpr, BV: tl.constexpr):
    """Solve (I + lower)ᵀ x = rhs, lower strictly lower triangular, last row first.

    x_t = rhs_t - Σ_{j>t} lower[j, t] x_j: column t of `lower` is picked out with a mask
    and a sum, as in `_solve_unit_lower`; x starts at 0, so only solved rows count.
    """
    x = tl.zeros([BT, BV], dtype=tl.float32)
    for step in range(BT):
        pick_row = (rows == BT - 1 - step)[:, None]
        pick_col = (rows == BT - 1 - step)[None, :]
        lower_col = tl.sum(tl.where(pick_col, lower, 0.0), axis=1)  # lower[:, t], [BT]
        rhs_row = tl.sum(tl.where(pick_row, rhs, 0.0), axis=0)  # [BV]
        x_row = rhs_row - tl.sum(lower_col[:, None] * x, axis=0)
        x = tl.where(pick_row, x_row[None, :], x)
    return x


# Not timed (no GPU here). Compiled offline for sm_90, ptxas reports fewer register spills
# with 8 warps than with the default 4: 8.9 vs 18.5 KB at K = V = 64, 0.25 vs 1.2 KB at 32.
BACKWARD_WARPS = 8


def dgd_rule_triton_backward(
    saved: tuple[torch.Tensor, ...],
    chunk_states: torch.Tensor,
    grad_o: torch.Tensor | None,
    grad_s: torch.Tensor | None,
    *,
    dgd: bool,
    read_before_write: bool,
    tiles: tuple[int, int, int],
    out: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gradients (dq, dk, dw, deta, dalpha, ds0) of the rule, in the inputs' dtypes.

    saved: the contiguous forward inputs (q, k, w, eta, alpha, s0); chunk_states: the
    fp32 chunk-start states [B, NT, H, K, V] stored by the forward with tiles
    (BT, BK, BV). A None grad_o / grad_s (that output did not reach the loss) counts as
    zero without being materialised. `out` takes preallocated gradients (the tests
    pass NaN-filled ones to prove every element is written).
    """
    q, k, w, eta, alpha, s0 = saved
    B, T, H, K = q.shape
    V = w.shape[-1]
    BT, BK, BV = tiles
    NT = chunk_states.shape[1]
    if out is None:
        out = tuple(torch.empty_like(x) for x in saved)
    grad_o = grad_o.contiguous() if grad_o is not None else None
    grad_s = grad_s.contiguous() if grad_s is not None else None
    _dgd_rule_bwd_kernel[(B * H,)](
        q, k, w, eta, alpha, chunk_states,
        grad_o if grad_o is not None else q, grad_s if grad_s is not None else s0,  # unused if None
        *out, T, H, K, V, NT,
        BT=BT, BK=BK, BV=BV, DGD=dgd, READ_BEFORE_WRITE=read_before_write,
        HAS_GRAD_O=grad_o is not None, HAS_GRAD_S=grad_s is not None,
        num_warps=BACKWARD_WARPS,
    )  # fmt: skip
    return tuple(out)
