r"""Triton kernels for DMGD's memory (kernel K4): fused read and fused inner gradient.

Rows x [N, d] (gradient tokens), memory V = Wa [h, d], U = Wb [d, h], P(x) = x + U relu(V x).
Every program holds V and U in registers and walks tiles of BN rows; a tile's hidden
activations relu(x Vᵀ) [BN, h] never leave registers.

- `_read_kernel`: one tile per program, writes P(x). HBM traffic 8 B per element (read x,
  write y) against about 16 B for the three-op reference plus its [N, h] intermediate.
- `_grad_partials_kernel`: rescales the rows as the objective does, evaluates the memory,
  forms the output residual r (l2_recon: P(x̂) − t̂; precond: P(x̂) M with M = ∂loss/∂C
  symmetrised, 2/n included) and accumulates rᵀa and ((r U) ⊙ 1[z > 0])ᵀ x̂ over its tiles.
- `_gram_partials_kernel`: precond's first pass, Σ P(x̂)ᵀP(x̂) and Σ ‖x̂‖².
- `_sum_partials_kernel`: the second pass. Each program writes its partial sums to its own
  row of a [P, K] buffer and this kernel adds the rows in program order: no atomics, so two
  runs give bitwise equal results. P = min(#tiles, MAX_PROGRAMS) and the tiles a program
  visits (pid, pid + P, ...) depend only on N and BN, not on the device.

All arithmetic is fp32 with "ieee" dots (no TF32) and IEEE-rounded division and sqrt
(Triton's default fp32 `/` is approximate on NVIDIA). d and h need not be powers of two:
tiles are padded to powers of two (at least 16 when compiled, the smallest `tl.dot` tile)
with masked loads; padded columns load as 0 and contribute exactly 0.

Register budget (ptxas -v for sm_90, BN = 64, 8 warps; no GPU was at hand to time them):
d = 32, h <= 16 (DMGD's default) 133-190 registers, no spills; d = 64, h = 16: the read
does not spill, the gradient kernels spill ~0.4 KB per thread; d = 64, h = 32: ~0.3-1 KB;
d = 128 spills 4-30 KB per thread, hence MAX_D = 64 and MAX_H = 32 (`check_supported`;
"auto" runs larger memories on "chunk"). BN and the warp count are not tuned.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_D, MAX_H = 64, 32  # register tiles: [BN, d] rows, [d, d] Gram, [h, d] + [d, h] gradients
DOT_PRECISION = tl.constexpr("ieee")  # fp32 FMA dots: no TF32 rounding of the gradients
MAX_PROGRAMS = 512  # partial-sum rows of the reduction; about 4 per SM on an H100
ROW_TILE = 64  # BN when compiled
NUM_WARPS = 8  # 4 spill at d = 32 already (the fp32 FMA dots hold whole rows per thread)
TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(float32).tiny: the references' norm clamp


@triton.jit
def _load_memory(v, u, D, H, BD: tl.constexpr, BH: tl.constexpr):
    ds, hs = tl.arange(0, BD), tl.arange(0, BH)
    v_t = tl.load(v + hs[:, None] * D + ds[None, :], mask=_mask(hs, H, ds, D), other=0.0)
    u_t = tl.load(u + ds[:, None] * H + hs[None, :], mask=_mask(ds, D, hs, H), other=0.0)
    return v_t, u_t  # [BH, BD], [BD, BH]


@triton.jit
def _mask(rows, n_rows, cols, n_cols):
    return (rows < n_rows)[:, None] & (cols < n_cols)[None, :]


@triton.jit
def _load_rows(ptr, tile, N, D, BN: tl.constexpr, BD: tl.constexpr):
    rows = tile.to(tl.int64) * BN + tl.arange(0, BN)  # int64: N * d may pass 2**31
    ds = tl.arange(0, BD)
    offs = rows[:, None] * D + ds[None, :]
    mask = _mask(rows, N, ds, D)
    return tl.load(ptr + offs, mask=mask, other=0.0), offs, mask


@triton.jit
def _memory(xs, v_t, u_t):
    z = tl.dot(xs, tl.trans(v_t), input_precision=DOT_PRECISION)  # [BN, BH]
    hidden = tl.maximum(z, 0.0)
    return z, hidden, xs + tl.dot(hidden, tl.trans(u_t), input_precision=DOT_PRECISION)


@triton.jit
def _divide_rows(x, scale):
    return tl.div_rn(x, tl.maximum(scale, TINY)[:, None])


@triton.jit
def _norms(x):
    return tl.sqrt_rn(tl.sum(x * x, axis=1))


@triton.jit
def _read_kernel(x, v, u, y, N, D, H, BN: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr):
    v_t, u_t = _load_memory(v, u, D, H, BD, BH)
    x_t, offs, mask = _load_rows(x, tl.program_id(0), N, D, BN, BD)
    _, _, out = _memory(x_t, v_t, u_t)
    tl.store(y + offs, out, mask=mask)


# fmt: off
@triton.jit
def _grad_partials_kernel(
    x, target, v, u, m, partials,  # rows [N, D], target [N, D] (RECON), m [D, D] (not RECON)
    N, D, H, n_programs, tiles_per_program,
    RECON: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr,
):
    # fmt: on
    pid = tl.program_id(0)
    ds, hs = tl.arange(0, BD), tl.arange(0, BH)
    v_t, u_t = _load_memory(v, u, D, H, BD, BH)
    if not RECON:
        m_t = tl.load(m + ds[:, None] * D + ds[None, :], mask=_mask(ds, D, ds, D), other=0.0)
    grad_v = tl.zeros([BH, BD], dtype=tl.float32)
    grad_u = tl.zeros([BD, BH], dtype=tl.float32)
    loss = tl.zeros([BN], dtype=tl.float32)
    for i in range(tiles_per_program):
        tile = pid + i * n_programs  # past the last tile: all rows masked, adds exact zeros
        x_t, offs, mask = _load_rows(x, tile, N, D, BN, BD)
        if RECON:
            t_t = tl.load(target + offs, mask=mask, other=0.0)
            scale = tl.maximum(_norms(x_t), _norms(t_t))
            xs = _divide_rows(x_t, scale)
            z, hidden, out = _memory(xs, v_t, u_t)
            residual = out - _divide_rows(t_t, scale)
            loss += 0.5 * tl.sum(residual * residual, axis=1)
        else:
            xs = _divide_rows(x_t, _norms(x_t))
            z, hidden, out = _memory(xs, v_t, u_t)
            residual = tl.dot(out, m_t, input_precision=DOT_PRECISION)
        grad_u = tl.dot(tl.trans(residual), hidden, grad_u, input_precision=DOT_PRECISION)
        dz = tl.where(z > 0, tl.dot(residual, u_t, input_precision=DOT_PRECISION), 0.0)
        grad_v = tl.dot(tl.trans(dz), xs, grad_v, input_precision=DOT_PRECISION)
    # partial row layout: ∇V [H, D], ∇U [D, H], loss
    row = partials + pid.to(tl.int64) * (2 * H * D + 1)
    tl.store(row + hs[:, None] * D + ds[None, :], grad_v, mask=_mask(hs, H, ds, D))
    tl.store(row + H * D + ds[:, None] * H + hs[None, :], grad_u, mask=_mask(ds, D, hs, H))
    tl.store(row + 2 * H * D, tl.sum(loss, axis=0))


@triton.jit
def _gram_partials_kernel(
    x, v, u, partials, N, D, H, n_programs, tiles_per_program,
    BN: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    ds = tl.arange(0, BD)
    v_t, u_t = _load_memory(v, u, D, H, BD, BH)
    gram = tl.zeros([BD, BD], dtype=tl.float32)
    squares = tl.zeros([BN], dtype=tl.float32)
    for i in range(tiles_per_program):
        x_t, _, _ = _load_rows(x, pid + i * n_programs, N, D, BN, BD)
        xs = _divide_rows(x_t, _norms(x_t))
        _, _, out = _memory(xs, v_t, u_t)
        gram = tl.dot(tl.trans(out), out, gram, input_precision=DOT_PRECISION)
        squares += tl.sum(xs * xs, axis=1)
    # partial row layout: Σ P(x̂)ᵀP(x̂) [D, D], Σ ‖x̂‖²
    row = partials + pid.to(tl.int64) * (D * D + 1)
    tl.store(row + ds[:, None] * D + ds[None, :], gram, mask=_mask(ds, D, ds, D))
    tl.store(row + D * D, tl.sum(squares, axis=0))


@triton.jit
def _sum_partials_kernel(partials, out, n_partials, K, scale, BK: tl.constexpr):
    cols = tl.program_id(0) * BK + tl.arange(0, BK)
    mask = cols < K
    total = tl.zeros([BK], dtype=tl.float32)
    for p in range(n_partials):  # fixed order: deterministic
        total += tl.load(partials + p * K + cols, mask=mask, other=0.0)
    tl.store(out + cols, total * scale, mask=mask)


# Decided when the kernels above were decorated: TRITON_INTERPRET must be set before this
# module is imported, and only then can the kernels run on CPU tensors.
INTERPRETED = not isinstance(_read_kernel, triton.JITFunction)


def check_supported(x: torch.Tensor, v: torch.Tensor) -> None:
    """ValueError (naming the value) unless the kernels handle these rows and this memory."""
    (h, d), problem = v.shape, supported_problem(x.dtype, x.shape[1], v.shape[0])
    if problem:
        raise ValueError(f"{problem} (d={d}, h={h}, dtype {x.dtype}); use impl='chunk'")
    if not x.is_cuda and not INTERPRETED:
        raise RuntimeError(
            "the Triton dmgd_mlp kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
            "clbench.kernels.dmgd_mlp.triton is first imported (CPU interpreter); "
            "use impl='chunk' on CPU"
        )


def supported_problem(dtype: torch.dtype, d: int, h: int) -> str | None:
    """Why the kernels cannot take this case, or None."""
    if dtype != torch.float32:
        return f"the dmgd_mlp kernels compute in float32 only; got {dtype}"
    if d > MAX_D or h > MAX_H:
        return f"the dmgd_mlp kernels take d <= {MAX_D} and h <= {MAX_H} (register tiles)"
    return None


def _tiles(d: int, h: int, row_tile: int | None) -> dict:
    floor = 1 if INTERPRETED else 16  # tl.dot needs tiles of at least 16 when compiled
    bn = row_tile or ROW_TILE
    if not INTERPRETED and (bn < 16 or bn & (bn - 1)):
        raise ValueError(f"row_tile={bn} must be a power of two >= 16 when compiled")
    bd, bh = (max(triton.next_power_of_2(n), floor) for n in (d, h))
    return {"BN": bn, "BD": bd, "BH": bh, "num_warps": NUM_WARPS}


def read_triton_forward(x, v, u, *, out=None, row_tile=None) -> torch.Tensor:
    """P(x) by the fused kernel, no checks and no autograd; `out` takes a preallocated
    contiguous [N, d] output (the tests pass a NaN-filled one)."""
    x, v, u = (t.detach().contiguous() for t in (x, v, u))
    (n, d), h = x.shape, v.shape[0]
    y = torch.empty_like(x) if out is None else out
    tiles = _tiles(d, h, row_tile)
    if n:
        _read_kernel[(triton.cdiv(n, tiles["BN"]),)](x, v, u, y, n, d, h, **tiles)
    return y


class ReadTriton(torch.autograd.Function):
    """Forward: the fused kernel. Backward: autograd through `read_chunk` (recompute)."""

    @staticmethod
    def forward(ctx, x, v, u):
        ctx.save_for_backward(x, v, u)
        return read_triton_forward(x, v, u)

    @staticmethod
    def backward(ctx, grad_y):
        from .chunk import read_chunk

        needs = ctx.needs_input_grad
        inputs = [t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, needs, strict=True)]
        with torch.enable_grad():
            y = read_chunk(*inputs)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad_y))
        return tuple(next(grads) if t.requires_grad else None for t in inputs)


def inner_grad_triton(objective, x, v, u, target, *, row_tile=None, max_programs=MAX_PROGRAMS):
    """(loss, ∇v, ∇u) as `inner_grad_chunk`, from the fused kernels (no autograd).
    row_tile and max_programs only tile the work (the tests use small ones)."""
    x, v, u = (t.detach().contiguous() for t in (x, v, u))
    (n, d), h = x.shape, v.shape[0]
    tiles = _tiles(d, h, row_tile)
    n_tiles = triton.cdiv(n, tiles["BN"])
    n_programs = min(n_tiles, max_programs)
    grid_args = (n, d, h, n_programs, triton.cdiv(n_tiles, n_programs))
    if objective == "l2_recon":
        partials = x.new_empty(n_programs, 2 * h * d + 1)
        _grad_partials_kernel[(n_programs,)](
            x, target.detach().contiguous(), v, u, x, partials, *grid_args, RECON=True, **tiles
        )  # fmt: skip
        sums = _sum_partials(partials, 1.0 / n)
        return sums[-1], sums[: h * d].view(h, d), sums[h * d : 2 * h * d].view(d, h)

    partials = x.new_empty(n_programs, d * d + 1)
    _gram_partials_kernel[(n_programs,)](x, v, u, partials, *grid_args, **tiles)
    sums = _sum_partials(partials, 1.0)
    # A few [d, d] ops in PyTorch, without a host sync (s = 0 is handled with where).
    cov, s = sums[: d * d].view(d, d) / n, sums[-1] / (n * d)
    nonzero = s > 0
    diff = cov / torch.where(nonzero, s, 1.0) - torch.eye(d, device=x.device)
    loss = torch.where(nonzero, diff.square().sum() / d, 0.0)
    # ∂loss/∂P = P (G + Gᵀ) / n with G = ∂loss/∂C = 2 diff / (s d)
    m = torch.where(nonzero, 2 * (diff + diff.T) / (torch.where(nonzero, s, 1.0) * d * n), 0.0)
    partials = x.new_empty(n_programs, 2 * h * d + 1)
    _grad_partials_kernel[(n_programs,)](
        x, x, v, u, m.contiguous(), partials, *grid_args, RECON=False, **tiles
    )  # fmt: skip
    sums = _sum_partials(partials, 1.0)
    return loss, sums[: h * d].view(h, d), sums[h * d : 2 * h * d].view(d, h)


def _sum_partials(partials: torch.Tensor, scale: float, block: int = 1024) -> torch.Tensor:
    n_partials, k = partials.shape
    out = partials.new_empty(k)
    _sum_partials_kernel[(triton.cdiv(k, block),)](partials, out, n_partials, k, scale, BK=block)
    return out
