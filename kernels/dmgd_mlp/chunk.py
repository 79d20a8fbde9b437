"""Batched PyTorch reference for DMGD's memory (kernel K4): the "unfused" version.

Exactly what `clbench.nested.optim.dmgd` computed before the kernel existed, op for op, so
the optimizer's CPU results did not change by a bit when it moved onto this dispatch:

- read: P(x) = x + relu(x Vᵀ) Uᵀ as one matmul, one relu and one addmm (three passes over
  the rows, plus the [N, h] intermediate written and read twice);
- write: the objective's loss over the batched matmuls and `torch.autograd.grad` for
  (∇V, ∇U). On a GPU this is some twenty small kernels over the subsample; the Triton path
  fuses them into one pass (two for "precond") plus a deterministic reduction.
"""

from __future__ import annotations

import torch


def read_chunk(x: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """P(x) = x + U relu(V x) for a batch of row tokens x [N, d]."""
    return torch.addmm(x, torch.relu(x @ v.T), u.T)


def inner_grad_chunk(
    objective: str, x: torch.Tensor, v: torch.Tensor, u: torch.Tensor, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ∇v, ∇u) of DMGD's write objective by autograd (target: l2_recon only)."""
    with torch.enable_grad():
        v = v.detach().requires_grad_()
        u = u.detach().requires_grad_()
        if objective == "precond":
            loss = precond_loss(lambda t: read_chunk(t, v, u), x)
        else:
            loss = recon_loss(lambda t: read_chunk(t, v, u), x, target)
        grad_v, grad_u = torch.autograd.grad(loss, (v, u))
    return loss.detach(), grad_v, grad_u


def unit_rows(x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True) if scale is None else scale
    return x / norms.clamp_min(torch.finfo(x.dtype).tiny)


def precond_loss(memory, x: torch.Tensor) -> torch.Tensor:
    """Token-space orthogonality (Eq. 43): ‖C / s − I‖²_F / d with C the output covariance."""
    xn = unit_rows(x)
    n, d = xn.shape
    out = memory(xn)
    cov = out.T @ out / n
    s = xn.square().sum() / (n * d)  # trace of the input covariance / d: keeps the step size
    if s == 0:
        return out.sum() * 0
    return (cov / s - torch.eye(d, dtype=x.dtype, device=x.device)).square().sum() / d


def recon_loss(memory, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½ mean ‖P(x) − target‖², each pair scaled by the larger of its two norms."""
    scale = torch.maximum(x.norm(dim=1, keepdim=True), target.norm(dim=1, keepdim=True))
    out = memory(unit_rows(x, scale))
    return 0.5 * (out - unit_rows(target, scale)).square().sum(dim=1).mean()
