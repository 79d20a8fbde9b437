r"""Triton forward kernel for the gated DGD rule, with an autograd wrapper (kernel K1).

One program per (b, h) keeps the state S [K, V] in registers and walks the chunks of
BT tokens in order. Inside a chunk it evaluates the closed form of `chunk.py`
(see the derivation there) with the chunk-start state S̄ already known, so the
split U = U_free - U_state S̄ is not needed: the right-hand side
diag(eta) (W - diag(Γ_{t-1}) K S̄) is formed directly and (I + L) U = rhs is solved
by forward substitution over the BT rows.

BT only tiles the computation (the closed form is exact for any chunk), so the
wrapper rounds `chunk_size` up to a power of two, and on a GPU to at least 16, the
smallest tile `tl.dot` accepts; K and V are padded the same way with masked loads.
Under the interpreter (TRITON_INTERPRET=1, CPU tensors) BT keeps the requested size,
which lets the CPU tests cover small chunks. All arithmetic is fp32, with "ieee" dots
(no TF32), so results match `dgd_rule_chunk` in fp32 to about 1e-6 relative.

Backward: `triton_backward.py` (derivation there), a reverse pass over the chunks from
the chunk-start states this forward stores; `backward="recompute"` instead runs
autograd through `dgd_rule_chunk` (the first version, kept to cross-check and debug).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_chunk_size, check_inputs
from .chunk import dgd_rule_chunk


# fmt: off
@triton.jit
def _dgd_rule_fwd_kernel(
    q, k, w, eta, alpha, s0,  # inputs, contiguous: [B,T,H,K] x2, [B,T,H,V], [B,T,H] x2, [B,H,K,V]
    o, s_final, chunk_states,  # outputs: [B,T,H,V], [B,H,K,V], [B,NT,H,K,V] (if STORE_STATES)
    T, H, K, V, NT,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DGD: tl.constexpr,
    READ_BEFORE_WRITE: tl.constexpr,
    STORE_STATES: tl.constexpr,
):
    # fmt: on
    bh = tl.program_id(0).to(tl.int64)  # = b * H + h; int64 so large B*T*H*K offsets do not wrap
    b = bh // H
    h = bh % H
    rows = tl.arange(0, BT)
    cols_k = tl.arange(0, BK)
    cols_v = tl.arange(0, BV)
    mask_k = cols_k < K
    mask_v = cols_v < V
    kv_offs = cols_k[:, None] * V + cols_v[None, :]
    kv_mask = mask_k[:, None] & mask_v[None, :]

    state = tl.load(s0 + bh * K * V + kv_offs, mask=kv_mask, other=0.0).to(tl.float32)
    for n in range(NT):
        if STORE_STATES:
            tl.store(chunk_states + ((b * NT + n) * H + h) * K * V + kv_offs, state, mask=kv_mask)
        t = n * BT + rows
        mask_t = t < T
        token = (b * T + t) * H + h  # row index into the [B, T, H] layout
        q_c, k_c, w_c, eta_c, alpha_c = _load_chunk(
            q, k, w, eta, alpha, token, mask_t, cols_k, cols_v, mask_k, mask_v, K, V
        )
        log_gamma, log_gamma_prev, log_gamma_end, decay_prev = _chunk_log_gates(alpha_c, rows, BT)

        if DGD:
            k_state = tl.dot(k_c, state, input_precision="ieee")  # rows k_tᵀ S̄
            rhs = eta_c[:, None] * (w_c - tl.exp(log_gamma_prev)[:, None] * k_state)
            kk = tl.dot(k_c, tl.trans(k_c), input_precision="ieee")
            u = _solve_unit_lower(eta_c[:, None] * decay_prev * kk, rhs, rows, BT, BV)
        else:
            u = eta_c[:, None] * w_c

        read_gamma, read_decay = _read_gates(
            log_gamma, log_gamma_prev, decay_prev, rows, READ_BEFORE_WRITE
        )
        attn = tl.dot(q_c, tl.trans(k_c), input_precision="ieee") * read_decay
        o_c = tl.dot(read_gamma[:, None] * q_c, state, input_precision="ieee")
        o_c += tl.dot(attn, u, input_precision="ieee")
        v_offs = token[:, None] * V + cols_v[None, :]
        v_mask = mask_t[:, None] & mask_v[None, :]
        tl.store(o + v_offs, o_c.to(o.dtype.element_ty), mask=v_mask)

        k_end = tl.exp(log_gamma_end - log_gamma)[:, None] * k_c  # (Γ_C/Γ_i) k_i
        state = tl.exp(log_gamma_end) * state + tl.dot(tl.trans(k_end), u, input_precision="ieee")

    tl.store(s_final + bh * K * V + kv_offs, state.to(s_final.dtype.element_ty), mask=kv_mask)


@triton.jit
def _load_chunk(q, k, w, eta, alpha, token, mask_t, cols_k, cols_v, mask_k, mask_v, K, V):
    """One chunk's rows of q, k, w, eta, alpha in fp32.

    Tail tokens (t >= T) load as alpha = 1, eta = 0, q = k = w = 0: they write
    nothing and do not decay the state, as the padding of chunk.py.
    """
    qk_offs = token[:, None] * K + cols_k[None, :]
    v_offs = token[:, None] * V + cols_v[None, :]
    qk_mask = mask_t[:, None] & mask_k[None, :]
    v_mask = mask_t[:, None] & mask_v[None, :]
    q_c = tl.load(q + qk_offs, mask=qk_mask, other=0.0).to(tl.float32)
    k_c = tl.load(k + qk_offs, mask=qk_mask, other=0.0).to(tl.float32)
    w_c = tl.load(w + v_offs, mask=v_mask, other=0.0).to(tl.float32)
    eta_c = tl.load(eta + token, mask=mask_t, other=0.0).to(tl.float32)
    alpha_c = tl.load(alpha + token, mask=mask_t, other=1.0).to(tl.float32)
    return q_c, k_c, w_c, eta_c, alpha_c


@triton.jit
def _chunk_log_gates(alpha_c, rows, BT: tl.constexpr):
    """log Γ_t, log Γ_{t-1}, log Γ_C and the ratios Γ_{t-1}/Γ_i (i < t, else 0).

    Cumulative log gates as masked row sums (no subtraction, so log Γ_{t-1} is exact
    even when the gates underflow); Γ_C is the last row of log Γ. The mask of the
    ratios goes in before the exp: a positive exponent above the diagonal could overflow.
    """
    strict = rows[:, None] > rows[None, :]  # i < t
    log_alpha = tl.log(alpha_c)
    log_gamma = tl.sum(tl.where(rows[:, None] >= rows[None, :], log_alpha[None, :], 0.0), axis=1)
    log_gamma_prev = tl.sum(tl.where(strict, log_alpha[None, :], 0.0), axis=1)
    log_gamma_end = tl.sum(tl.where(rows == BT - 1, log_gamma, 0.0), axis=0)
    decay_prev = tl.exp(
        tl.where(strict, log_gamma_prev[:, None] - log_gamma[None, :], float("-inf"))
    )
    return log_gamma, log_gamma_prev, log_gamma_end, decay_prev


@triton.jit
def _read_gates(log_gamma, log_gamma_prev, decay_prev, rows, READ_BEFORE_WRITE: tl.constexpr):
    """The weight of S̄ in row t's read and the in-chunk read ratios (masked, see above)."""
    if READ_BEFORE_WRITE:
        return tl.exp(log_gamma_prev), decay_prev  # Γ_{t-1}, Γ_{t-1}/Γ_i for i < t
    inclusive = rows[:, None] >= rows[None, :]
    read_decay = tl.exp(
        tl.where(inclusive, log_gamma[:, None] - log_gamma[None, :], float("-inf"))
    )
    return tl.exp(log_gamma), read_decay  # Γ_t, Γ_t/Γ_i for i <= t


@triton.jit
def _solve_unit_lower(lower, rhs, rows, BT: tl.constexpr, BV: tl.constexpr):
    """Solve (I + lower) u = rhs, lower strictly lower triangular, row by row.

    Registers cannot be indexed by a loop variable, so row t is picked out with a
    mask and a sum (exact: every other term is 0). u starts at 0, so lower[t] @ u
    only sees the rows already solved.
    """
    u = tl.zeros([BT, BV], dtype=tl.float32)
    for t in range(BT):
        pick = (rows == t)[:, None]
        lower_row = tl.sum(tl.where(pick, lower, 0.0), axis=0)  # lower[t, :], [BT]
        rhs_row = tl.sum(tl.where(pick, rhs, 0.0), axis=0)  # [BV]
        u_row = rhs_row - tl.sum(lower_row[:, None] * u, axis=0)
        u = tl.where(pick, u_row[None, :], u)
    return u


# Decided when the kernel above was decorated: TRITON_INTERPRET must be set before this
# module is imported, and only then can the kernel run on CPU tensors.
INTERPRETED = not isinstance(_dgd_rule_fwd_kernel, triton.JITFunction)


def tiles(chunk_size: int, K: int, V: int) -> tuple[int, int, int]:
    """(BT, BK, BV): the token tile and the padded K and V widths (see module doc)."""
    min_tile = 1 if INTERPRETED else 16  # tl.dot needs tiles of at least 16 when compiled
    BT = max(triton.next_power_of_2(chunk_size), min_tile)
    return BT, max(triton.next_power_of_2(K), 16), max(triton.next_power_of_2(V), 16)


def dgd_rule_triton_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    *,
    dgd: bool = True,
    read_before_write: bool = True,
    chunk_size: int = 16,
    return_chunk_states: bool = False,
    out: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Run the kernel without input checks or autograd; returns (o, S_T[, chunk states]).

    Inputs may be non-contiguous: they are copied with .contiguous() (a no-op when
    they already are), since the kernel computes offsets for the dense layout.
    `out` takes preallocated contiguous outputs in the returned order; the tests pass
    NaN-filled ones to prove that every element is written. Chunk states are
    [B, NT, H, K, V] for NT = ceil(T / BT), BT the tile actually used (see module doc),
    in fp32 whatever the input dtype: the Triton backward restarts every chunk from them.
    """
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError(
            "the Triton dgd_rule kernel needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "clbench.kernels.dgd_rule.triton is first imported (CPU interpreter); "
            "use impl='chunk' on CPU"
        )
    # detach: the kernel never records autograd history (DGDRuleTriton adds it), and
    # the interpreter reads tensors through numpy, which refuses tensors needing grad.
    q, k, w, eta, alpha, s0 = (x.detach().contiguous() for x in (q, k, w, eta, alpha, s0))
    B, T, H, K = q.shape
    V = w.shape[-1]
    BT, BK, BV = tiles(chunk_size, K, V)
    NT = triton.cdiv(T, BT)
    if out is None:
        out = (q.new_empty(B, T, H, V), q.new_empty(B, H, K, V))
        if return_chunk_states:
            out += (q.new_empty(B, NT, H, K, V, dtype=torch.float32),)
    o, s_final = out[0], out[1]
    chunk_states = out[2] if return_chunk_states else s_final  # unused pointer otherwise
    _dgd_rule_fwd_kernel[(B * H,)](
        q, k, w, eta, alpha, s0, o, s_final, chunk_states, T, H, K, V, NT,
        BT=BT, BK=BK, BV=BV, DGD=dgd, READ_BEFORE_WRITE=read_before_write,
        STORE_STATES=return_chunk_states,
    )  # fmt: skip
    return tuple(out)


BACKWARDS = ("triton", "recompute")


class DGDRuleTriton(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: the Triton backward kernel of
    `triton_backward.py` ("triton", from the stored chunk-start states) or autograd
    through `dgd_rule_chunk` ("recompute", from the inputs alone)."""

    @staticmethod
    def forward(ctx, q, k, w, eta, alpha, s0, dgd, read_before_write, chunk_size, backward="triton"):
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {', '.join(map(repr, BACKWARDS))}; got {backward!r}")
        flags = {"dgd": dgd, "read_before_write": read_before_write, "chunk_size": chunk_size}
        store_states = backward == "triton"
        o, s_final, *chunk_states = dgd_rule_triton_forward(
            q, k, w, eta, alpha, s0, **flags, return_chunk_states=store_states
        )
        ctx.save_for_backward(q, k, w, eta, alpha, s0, *chunk_states)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        ctx.flags, ctx.backward = flags, backward
        return o, s_final

    @staticmethod
    def backward(ctx, grad_o, grad_s):
        needs = ctx.needs_input_grad[:6]  # the last four arguments are flags
        if ctx.backward == "triton":
            return (*_triton_grads(ctx, grad_o, grad_s, needs), None, None, None, None)
        inputs = [x.detach().requires_grad_(n) for x, n in zip(ctx.saved_tensors, needs, strict=True)]
        with torch.enable_grad():
            outputs = dgd_rule_chunk(*inputs, **ctx.flags, check_values=False)
        # An output that did not reach the loss arrives as None: leave it out.
        pairs = [(y, g) for y, g in zip(outputs, (grad_o, grad_s), strict=True) if g is not None]
        wanted = [x for x in inputs if x.requires_grad]
        # allow_unused: an input may not reach the used outputs (e.g. a one-token chunk whose
        # end state is not used reads only q and s0); its gradient is None, i.e. zero.
        grads = iter(torch.autograd.grad([y for y, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
        return (*(next(grads) if x.requires_grad else None for x in inputs), None, None, None, None)


def _triton_grads(ctx, grad_o, grad_s, needs) -> list[torch.Tensor | None]:
    from .triton_backward import dgd_rule_triton_backward  # imports this module's helpers

    *inputs, chunk_states = ctx.saved_tensors
    inputs = [x.detach().contiguous() for x in inputs]
    K, V = inputs[0].shape[-1], inputs[2].shape[-1]
    grads = dgd_rule_triton_backward(
        inputs, chunk_states, grad_o, grad_s,
        dgd=ctx.flags["dgd"], read_before_write=ctx.flags["read_before_write"],
        tiles=tiles(ctx.flags["chunk_size"], K, V),
    )  # fmt: skip
    return [g if need else None for g, need in zip(grads, needs, strict=True)]


def dgd_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor,
    s0: torch.Tensor,
    *,
    dgd: bool = True,
    read_before_write: bool = True,
    chunk_size: int = 16,
    check_values: bool = True,
    backward: str = "triton",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated DGD rule on the Triton kernel; same semantics and shapes as `dgd_rule_chunk`.

    Returns (o [B, T, H, V], S_T [B, H, K, V]) in the input dtype, differentiable w.r.t.
    every tensor input. float64 is refused: the kernel accumulates in fp32, so use
    impl="chunk" for fp64 ground truth. backward: "triton" (the backward kernel; the
    forward then also stores the fp32 chunk-start states, [B, NT, H, K, V]) or
    "recompute" (autograd through `dgd_rule_chunk`, nothing stored). Without autograd
    (grad mode off or no input requiring grad) the forward kernel runs alone.
    """
    check_inputs(q, k, w, eta, alpha, s0, values=check_values)
    check_chunk_size(chunk_size)
    if q.dtype == torch.float64:
        raise ValueError("dgd_rule_triton computes in fp32; use impl='chunk' for float64 inputs")
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(map(repr, BACKWARDS))}; got {backward!r}")
    inputs = (q, k, w, eta, alpha, s0)
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
        flags = {"dgd": dgd, "read_before_write": read_before_write, "chunk_size": chunk_size}
        return dgd_rule_triton_forward(*inputs, **flags)
    return DGDRuleTriton.apply(*inputs, dgd, read_before_write, chunk_size, backward)
