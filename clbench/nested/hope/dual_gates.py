r"""Gate coefficients of the dual form (dual.py): log-space products of alpha and mu per (head,
example), with hand-written backward passes.

lg[:, r + 1] = log Γ_r = Σ_{j<=r} log alpha_j (lg[:, 0] = 0), lp likewise for mu, and

    G_{r,i} = Σ_{j=i..r} (Γ_r/Γ_j)(P_j/P_i)  (momentum)   or   Γ_r/Γ_i  (without),  i <= r

Every ratio is exp of a masked log difference (masked before the exp: no overflow, gradient
exactly 0 outside the mask). The projection bank extends lg chunk by chunk and needs the rows
of each chunk, about 15 small autograd nodes per chunk when written with tensor ops; `_Extend`
and `_Rows` are one node each, with the same arithmetic forward and the textbook derivatives
backward (tests/test_hope_dual.py checks them with gradcheck).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=256)
def _outside(r0: int, r1: int, ncols: int, device: torch.device) -> torch.Tensor:
    """[r1 - r0, ncols] bool: column i is NOT in row r's sum (i > r), for rows r0 .. r1 - 1."""
    return torch.arange(ncols, device=device)[None, :] > torch.arange(r0, r1, device=device)[:, None]


def _ratios(rows: torch.Tensor, cols: torch.Tensor, r0: int) -> torch.Tensor:
    """exp(rows[r] - cols[i]) for i <= r, else 0: [HB, R], [HB, N] -> [HB, R, N]."""
    diff = rows[:, :, None] - cols[:, None, :]
    return diff.masked_fill(_outside(r0, r0 + rows.shape[1], cols.shape[1], diff.device), float("-inf")).exp()


class _Extend(torch.autograd.Function):
    """lg [HB, L], alpha [HB, n] -> [HB, L + n]: lg followed by lg[:, -1] + cumsum(log alpha)."""

    @staticmethod
    def forward(ctx, lg, alpha):
        ctx.save_for_backward(alpha)
        return torch.cat([lg, lg[:, -1:] + torch.log(alpha).cumsum(-1)], dim=1)

    @staticmethod
    def backward(ctx, grad):
        (alpha,) = ctx.saved_tensors
        n = alpha.shape[1]
        old, new = grad[:, :-n], grad[:, -n:]
        d_lg = old.clone()
        d_lg[:, -1] += new.sum(1)
        d_alpha = new.flip(1).cumsum(1).flip(1) / alpha  # the cumsum's transpose, then log's derivative
        return d_lg, d_alpha


class _Rows(torch.autograd.Function):
    """(lg [HB, L], dp [HB, T, T] or None) -> (G [HB, R, N], Γ [HB, R, 1]) for rows r0 .. r1 - 1
    and columns 0 .. N - 1."""

    @staticmethod
    def forward(ctx, lg, dp, r0, r1, ncols):
        lg_rows = lg[:, r0 + 1:r1 + 1]
        ratio = _ratios(lg_rows, lg[:, 1:ncols + 1], r0)
        block = None if dp is None else dp[:, :ncols, :ncols]
        g = ratio if block is None else torch.bmm(ratio, block)  # G = D_Γ D_P
        gamma = lg_rows.exp()[:, :, None]
        ctx.save_for_backward(ratio, gamma, block)
        ctx.shape, ctx.rows, ctx.ncols, ctx.has_dp = lg.shape, (r0 + 1, r1 + 1), ncols, dp is not None
        ctx.dp_shape = None if dp is None else dp.shape
        return g, gamma

    @staticmethod
    def backward(ctx, d_g, d_gamma):
        ratio, gamma, block = ctx.saved_tensors
        (a, b), n = ctx.rows, ctx.ncols
        d_lg, d_dp = ratio.new_zeros(ctx.shape), None
        if d_gamma is not None:
            d_lg[:, a:b] += d_gamma[:, :, 0] * gamma[:, :, 0]
        if d_g is not None:
            d_ratio = d_g if block is None else torch.bmm(d_g, block.transpose(1, 2))
            if block is not None and ctx.needs_input_grad[1]:
                d_dp = ratio.new_zeros(ctx.dp_shape)
                d_dp[:, :n, :n] = torch.bmm(ratio.transpose(1, 2), d_g)
            d_diff = d_ratio * ratio  # exp's derivative; zero outside the mask
            d_lg[:, a:b] += d_diff.sum(2)
            d_lg[:, 1:n + 1] -= d_diff.sum(1)
        return d_lg, d_dp, None, None, None


class Gates:
    """Gate products per (head, example) [H*B, .], extended chunk by chunk (momentum gates mu
    [H*B, T] are known up front: they are read from the layer input)."""

    def __init__(self, mu: torch.Tensor | None, like: torch.Tensor):
        self.lg = like.new_zeros(like.shape[0], 1)
        self.lp = self.dp = None
        if mu is not None:
            self.lp = F.pad(torch.log(mu).cumsum(-1), (1, 0))
            self.dp = _ratios(self.lp[:, 1:], self.lp[:, 1:], 0)  # dp[j, i] = P_j / P_i, i <= j

    def extend(self, alpha: torch.Tensor) -> None:
        self.lg = _Extend.apply(self.lg, alpha)

    def rows(self, r0: int, r1: int, ncols: int):
        """(G [HB, r1 - r0, ncols], Γ [HB, r1 - r0, 1]) for rows r0 .. r1 - 1 (r0 >= -1)."""
        return _Rows.apply(self.lg, self.dp, r0, r1, ncols)

    def momentum_row(self, r: int, ncols: int) -> torch.Tensor:
        """P_r / P_i for i < ncols: the weights of the momentum after token r."""
        return (self.lp[:, r + 1:r + 2] - self.lp[:, 1:ncols + 1]).exp()
