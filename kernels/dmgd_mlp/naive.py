"""Row-loop reference for DMGD's memory (kernel K4): the ground truth, gradients by hand.

The memory is the residual ReLU MLP of `clbench.nested.optim.dmgd`, applied to each row
(gradient token) x ∈ R^d on its own:

    z = V x,  a = relu(z),  P(x) = x + U a,      V = Wa ∈ R^{h×d},  U = Wb ∈ R^{d×h}

Its inner gradient, written out for one row with output-space residual r = ∂loss/∂P(x)
(the K4 formulas of nested_learning.md §9.2, one row at a time):

    ∇U += r aᵀ,    ∇V += ((Uᵀ r) ⊙ 1[z > 0]) xᵀ

with relu'(0) = 0, as torch's relu backward. The two objectives of DMGD's write differ only
in r; both are defined on rescaled rows (see `chunk.py` for the losses as autograd sees them):

- "l2_recon": both rows divided by the larger of their two norms, r = (P(x̂) − t̂) / n,
  loss = ½ mean ‖P(x̂) − t̂‖²;
- "precond": unit rows x̂, C = mean P(x̂)P(x̂)ᵀ, s = mean ‖x̂‖² / d, D = C / s − I,
  loss = ‖D‖²_F / d, so ∂loss/∂C = 2D / (s d) and r = 2 (∂loss/∂C) P(x̂) / n (D is
  symmetric); it needs C before any r, hence two passes over the rows. s = 0 (all rows zero)
  gives loss 0 and zero gradients.

This file uses no batched matmul and no autograd, so it checks `chunk.py` (autograd over
batched matmuls) and `triton.py` (fused, hand-written gradient) independently.
"""

from __future__ import annotations

import torch


def read_naive(x: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """P(x) row by row: x [N, d], v [h, d], u [d, h] -> [N, d]."""
    return torch.stack([row + u @ torch.relu(v @ row) for row in x]) if len(x) else x.clone()


def inner_grad_naive(
    objective: str, x: torch.Tensor, v: torch.Tensor, u: torch.Tensor, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ∇v, ∇u) of DMGD's write objective on the rows of x (target: l2_recon only)."""
    n, d = x.shape
    tiny = torch.finfo(x.dtype).tiny
    grad_v, grad_u = torch.zeros_like(v), torch.zeros_like(u)
    if objective == "l2_recon":
        loss = x.new_zeros(())
        for row, goal in zip(x, target, strict=True):
            scale = torch.maximum(row.norm(), goal.norm()).clamp_min(tiny)
            residual = _memory(row / scale, v, u)[2] - goal / scale
            loss = loss + 0.5 * residual.dot(residual) / n
            _accumulate(grad_v, grad_u, row / scale, residual / n, v, u)
        return loss, grad_v, grad_u

    units = [row / row.norm().clamp_min(tiny) for row in x]
    cov, sq = x.new_zeros(d, d), x.new_zeros(())
    for unit in units:
        out = _memory(unit, v, u)[2]
        cov += torch.outer(out, out) / n
        sq += unit.dot(unit)
    s = sq / (n * d)
    if s == 0:
        return x.new_zeros(()), grad_v, grad_u
    diff = cov / s - torch.eye(d, dtype=x.dtype, device=x.device)
    dloss_dcov = 2 * diff / (s * d)
    for unit in units:
        out = _memory(unit, v, u)[2]
        _accumulate(grad_v, grad_u, unit, 2 * dloss_dcov @ out / n, v, u)
    return diff.square().sum() / d, grad_v, grad_u


def _memory(row, v, u):
    z = v @ row
    hidden = torch.relu(z)
    return z, hidden, row + u @ hidden


def _accumulate(grad_v, grad_u, row, residual, v, u) -> None:
    """Add one row's ∇v, ∇u for output residual `residual` (= ∂loss/∂P(row))."""
    z, hidden, _ = _memory(row, v, u)
    grad_u += torch.outer(residual, hidden)
    grad_v += torch.outer((u.T @ residual) * (z > 0), row)
