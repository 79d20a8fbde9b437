r"""Triton forward kernel for the 2-layer MLP memory (kernel K2), with an autograd wrapper.

One program per (b, g) holds both states, S2 [d, h] and S1 [h, d], in registers and walks
the chunks in order. Per chunk, fused, with the math of `chunk.py`:

1. the MLP forward at the chunk-start weights: z = k S2, a = silu(z), err = k + a S1 - v̂,
   where v̂ = v + silu(v S2) S1 is computed here when SELF_MODIFYING;
2. the hand backprop: hidden_err = (err S1ᵀ) ⊙ silu'(z);
3. the S2 write, K1's closed form with the start state known: with DGD,
   (I + L) U2 = diag(eta) (-hidden_err - diag(Γ_{t-1}) K S̄2), L_ti = eta_t (Γ_{t-1}/Γ_i) k_tᵀ k_i,
   solved by forward substitution; K S̄2 is z from step 1, not recomputed. Reads
   z_q = diag(Γ_{t-1}) Q S̄2 + ((Q Kᵀ) ⊙ decay) U2, then S2' = Γ_C S̄2 + (diag(Γ_C/Γ_i) K)ᵀ U2;
4. the S1 write without DGD: U1 = -diag(eta / max(1, ||a||²)) err, reads
   h_q = diag(Γ_{t-1}) silu(z_q) S̄1 + ((silu(z_q) Aᵀ) ⊙ decay) U1, and S1' likewise;
5. o = q + h_q.

Unlike K1's tile, the chunk size C is semantic here (gradients at each chunk's start
weights), so the tile is BT = next power of two >= C (at least 16 when compiled, the
smallest `tl.dot` tile) and rows >= C of a tile load as padding (alpha = 1, eta = 0, zero
vectors: they write nothing and do not decay the state). d and h are padded to powers of
two >= 16 with masked loads. All arithmetic fp32 with "ieee" dots (no TF32).

Register budget: the two states take 2 d h fp32 values per program (64 KB at d = 64,
h = 128, the size §9.2 plans for); much larger h would need tiling over h, not done here.
Backward: recompute through `mlp_memory_chunk` under autograd (as K1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dgd_rule.triton import _chunk_log_gates, _solve_unit_lower
from .checks import check_inputs
from .chunk import mlp_memory_chunk

MAX_CHUNK = 128  # the forward substitution walks the tile row by row; longer chunks: impl="chunk"


# fmt: off
@triton.jit
def _mlp_memory_fwd_kernel(
    q, k, v, eta, alpha, s2_in, s1_in,  # contiguous: [B,G,T,d] x3, [B,G,T] x2, [B,G,d,h], [B,G,h,d]
    o, s2_out, s1_out,  # [B,G,T,d], [B,G,d,h], [B,G,h,d]
    T, D, HID, C, NT,
    BT: tl.constexpr,
    BD: tl.constexpr,
    BH: tl.constexpr,
    DGD: tl.constexpr,
    SELF_MODIFYING: tl.constexpr,
):
    # fmt: on
    bg = tl.program_id(0).to(tl.int64)  # = b * G + g; int64 so large offsets do not wrap
    rows = tl.arange(0, BT)
    cols_d = tl.arange(0, BD)
    cols_h = tl.arange(0, BH)
    mask_d = cols_d < D
    mask_h = cols_h < HID
    dh_offs = cols_d[:, None] * HID + cols_h[None, :]
    hd_offs = cols_h[:, None] * D + cols_d[None, :]
    dh_mask = mask_d[:, None] & mask_h[None, :]
    hd_mask = mask_h[:, None] & mask_d[None, :]

    s2 = tl.load(s2_in + bg * D * HID + dh_offs, mask=dh_mask, other=0.0).to(tl.float32)
    s1 = tl.load(s1_in + bg * HID * D + hd_offs, mask=hd_mask, other=0.0).to(tl.float32)
    for n in range(NT):
        t = n * C + rows
        mask_t = (rows < C) & (t < T)  # rows past the chunk belong to the next one
        token = bg * T + t
        x_offs = token[:, None] * D + cols_d[None, :]
        x_mask = mask_t[:, None] & mask_d[None, :]
        q_c = tl.load(q + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        k_c = tl.load(k + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        v_c = tl.load(v + x_offs, mask=x_mask, other=0.0).to(tl.float32)
        eta_c = tl.load(eta + token, mask=mask_t, other=0.0).to(tl.float32)
        alpha_c = tl.load(alpha + token, mask=mask_t, other=1.0).to(tl.float32)

        # 1-2. forward at the chunk-start weights and the hand backprop.
        z = tl.dot(k_c, s2, input_precision="ieee")  # [BT, BH]
        sig = tl.sigmoid(z)
        a = z * sig
        target = v_c
        if SELF_MODIFYING:
            z_v = tl.dot(v_c, s2, input_precision="ieee")
            target = v_c + tl.dot(z_v * tl.sigmoid(z_v), s1, input_precision="ieee")
        err = k_c + tl.dot(a, s1, input_precision="ieee") - target  # [BT, BD]
        hidden_err = tl.dot(err, tl.trans(s1), input_precision="ieee") * (sig * (1 + z * (1 - sig)))

        # K1's gates: cumulative log gates as masked row sums, the mask before the exp.
        log_gamma, log_gamma_prev, log_gamma_end, decay_prev = _chunk_log_gates(alpha_c, rows, BT)
        gamma_prev = tl.exp(log_gamma_prev)[:, None]
        end_ratio = tl.exp(log_gamma_end - log_gamma)[:, None]
        gamma_end = tl.exp(log_gamma_end)

        # 3. S2: keys k, values -hidden_err, DGD per the flag; reads z_q.
        if DGD:
            rhs = eta_c[:, None] * (-hidden_err - gamma_prev * z)  # z = K S̄2
            kk = tl.dot(k_c, tl.trans(k_c), input_precision="ieee")
            u2 = _solve_unit_lower(eta_c[:, None] * decay_prev * kk, rhs, rows, BT, BH)
        else:
            u2 = -eta_c[:, None] * hidden_err
        qk = tl.dot(q_c, tl.trans(k_c), input_precision="ieee") * decay_prev
        z_q = tl.dot(gamma_prev * q_c, s2, input_precision="ieee")
        z_q += tl.dot(qk, u2, input_precision="ieee")
        s2 = gamma_end * s2 + tl.dot(tl.trans(end_ratio * k_c), u2, input_precision="ieee")

        # 4. S1: keys a, values -err, normalised step, no DGD; reads h_q at queries silu(z_q).
        eta1 = eta_c / tl.maximum(tl.sum(a * a, axis=1), 1.0)
        u1 = -eta1[:, None] * err
        q_hidden = z_q * tl.sigmoid(z_q)
        qa = tl.dot(q_hidden, tl.trans(a), input_precision="ieee") * decay_prev
        h_q = tl.dot(gamma_prev * q_hidden, s1, input_precision="ieee")
        h_q += tl.dot(qa, u1, input_precision="ieee")
        s1 = gamma_end * s1 + tl.dot(tl.trans(end_ratio * a), u1, input_precision="ieee")

        tl.store(o + x_offs, (q_c + h_q).to(o.dtype.element_ty), mask=x_mask)

    tl.store(s2_out + bg * D * HID + dh_offs, s2.to(s2_out.dtype.element_ty), mask=dh_mask)
    tl.store(s1_out + bg * HID * D + hd_offs, s1.to(s1_out.dtype.element_ty), mask=hd_mask)


# Decided when the kernel above was decorated: TRITON_INTERPRET must be set before this
# module is imported, and only then can the kernel run on CPU tensors.
INTERPRETED = not isinstance(_mlp_memory_fwd_kernel, triton.JITFunction)


def mlp_memory_triton_forward(
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
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the kernel without input checks or autograd; returns (o, S2 after, S1 after).

    Inputs may be non-contiguous (copied with .contiguous()). `out` takes preallocated
    contiguous outputs in the returned order; the tests pass NaN-filled ones to prove
    that every element is written.
    """
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError(
            "the Triton mlp_memory kernel needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "clbench.kernels.mlp_memory.triton is first imported (CPU interpreter); "
            "use impl='chunk' on CPU"
        )
    # detach: the kernel records no autograd history (MLPMemoryTriton adds it), and the
    # interpreter reads tensors through numpy, which refuses tensors needing grad.
    q, k, v, eta, alpha, s2, s1 = (x.detach().contiguous() for x in (q, k, v, eta, alpha, s2, s1))
    B, G, T, D = q.shape
    HID = s2.shape[-1]
    C = min(chunk_size, T)  # one chunk holds at most the whole sequence
    min_tile = 1 if INTERPRETED else 16  # tl.dot needs tiles of at least 16 when compiled
    BT = max(triton.next_power_of_2(C), min_tile)
    BD = max(triton.next_power_of_2(D), 16)
    BH = max(triton.next_power_of_2(HID), 16)
    if out is None:
        out = (torch.empty_like(q), torch.empty_like(s2), torch.empty_like(s1))
    _mlp_memory_fwd_kernel[(B * G,)](
        q, k, v, eta, alpha, s2, s1, *out, T, D, HID, C, triton.cdiv(T, C),
        BT=BT, BD=BD, BH=BH, DGD=dgd, SELF_MODIFYING=self_modifying,
        num_warps=4 if BD * BH <= 4096 else 8,  # a guess: not yet tuned on a GPU
    )  # fmt: skip
    return tuple(out)


class MLPMemoryTriton(torch.autograd.Function):
    """Forward: the Triton kernel. Backward: autograd through `mlp_memory_chunk` (recompute)."""

    @staticmethod
    def forward(ctx, q, k, v, eta, alpha, s2, s1, chunk_size, dgd, self_modifying, stop_grad_writes):
        flags = {"chunk_size": chunk_size, "dgd": dgd, "self_modifying": self_modifying}
        o, s2_end, s1_end = mlp_memory_triton_forward(q, k, v, eta, alpha, s2, s1, **flags)
        ctx.save_for_backward(q, k, v, eta, alpha, s2, s1)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        ctx.flags = {**flags, "stop_grad_writes": stop_grad_writes}
        return o, s2_end, s1_end

    @staticmethod
    def backward(ctx, grad_o, grad_s2, grad_s1):
        needs = ctx.needs_input_grad[:7]  # the last four arguments are flags
        inputs = [x.detach().requires_grad_(n) for x, n in zip(ctx.saved_tensors, needs, strict=True)]
        with torch.enable_grad():
            outputs = mlp_memory_chunk(*inputs, **ctx.flags, check_values=False)
        # An output that did not reach the loss arrives as None: leave it out.
        pairs = [(y, g) for y, g in zip(outputs, (grad_o, grad_s2, grad_s1), strict=True) if g is not None]
        wanted = [x for x in inputs if x.requires_grad]
        grads = iter(
            torch.autograd.grad([y for y, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
        )
        grads = [next(grads) if x.requires_grad else None for x in inputs]
        return (*grads, None, None, None, None)


def mlp_memory_triton(
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
    """The MLP memory on the Triton kernel; shapes and semantics of `mlp_memory_chunk`.

    Returns (o, S2 after, S1 after) in the input dtype, differentiable w.r.t. every tensor
    input. float64 is refused (the kernel computes in fp32: use impl="chunk"), and so are
    chunks longer than MAX_CHUNK tokens (the in-kernel solve walks a chunk row by row).
    """
    check_inputs(q, k, v, eta, alpha, s2, s1, chunk_size=chunk_size, values=check_values)
    if q.dtype == torch.float64:
        raise ValueError("mlp_memory_triton computes in fp32; use impl='chunk' for float64 inputs")
    if min(chunk_size, q.shape[2]) > MAX_CHUNK:
        raise ValueError(
            f"mlp_memory_triton takes chunks of at most {MAX_CHUNK} tokens; got chunk_size="
            f"{chunk_size} for T={q.shape[2]} (use impl='chunk')"
        )
    return MLPMemoryTriton.apply(
        q, k, v, eta, alpha, s2, s1, chunk_size, dgd, self_modifying, stop_grad_writes
    )
