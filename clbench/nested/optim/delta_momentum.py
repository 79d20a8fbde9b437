"""Delta momentum (Nested Learning Eq. 48–49; spec §4.4 item 2).

Momentum trained with an L2 (delta-rule) inner objective instead of the dot product of plain
momentum. The paper prints m ← m (α − gᵀg) − η P g (arXiv; NeurIPS puts the factor on the
left): a decay of the stored momentum that depends on the current gradient, so the memory
"overwrites" what it holds in the direction of the new gradient instead of only adding to it.
We take P = I (the plain-gradient value of Eq. 46–47) and keep torch's SGD convention
(buffer b accumulates gradients, the parameter moves by −lr·b):

    b ← α · D_g(b) + g          p ← p − lr · b

where g already contains the L2 weight decay (as in torch.optim.SGD). The shape of the
gᵀg factor is ambiguous for matrix parameters (spec [U]); option `form` chooses D_g, with
ĝ = g / ‖g‖_F (so the decay strength λ = `delta` ∈ [0, 1] does not depend on the gradient's
scale, and every factor below has eigenvalues in [1 − λ, 1]):

- "matrix" (default): D_g(b) = b (I − λ ĝᵀĝ) for a parameter viewed as (out, in·…): the
  arXiv order m(α − gᵀg). It decays the momentum along the input directions spanned by the
  current gradient's rows; for one sample (g = δxᵀ) that is b(I − λ x̂x̂ᵀ), the momentum
  analogue of DGD's W(I − η′xxᵀ) (Eq. 57). Costs 4·min(out, in)·out·in FLOPs per step.
- "projection": D_g(b) = b − λ⟨b, ĝ⟩ĝ on the flattened tensors: the delta rule with the whole
  gradient as one unit key; O(n). It is what "matrix" reduces to for a 1-row matrix, so 1-D
  parameters (biases, norm scales) always use it.
- "scalar": D_g(b) = (1 − λ r/(1 + r)) b with r = ‖g‖² / EMA(‖g‖²) (EMA decay 0.99): the
  literal scalar reading α − c‖g‖², made scale-free by measuring ‖g‖² against its own
  history, so the momentum decays more when the gradient is unusually large (a landscape
  change) and c needs no tuning per model.

We write the factor as α·(I − λ ĝᵀĝ) rather than αI − λ ĝᵀĝ so that every λ in [0, 1] is valid
for every α (no sign flips). λ = 0 is exactly torch.optim.SGD with momentum α; g = 0 gives
b ← α b (pure decay). Both are tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from clbench.nested.optim.common import check_momentum, run_closure
from clbench.nested.optim.newton_schulz import as_matrix

FORMS = ("matrix", "projection", "scalar")
NORM_EMA = 0.99  # history of ‖g‖² for the "scalar" form


@dataclass
class DeltaMomentumParams:
    momentum: float | None = None  # α; None = the run's train.momentum if > 0, else 0.9
    delta: float = 0.5  # λ: fraction of the momentum overwritten along the current gradient
    form: Literal["matrix", "projection", "scalar"] = "matrix"

    def __post_init__(self):
        if self.form not in FORMS:  # clbench's config layer checks it too; plain PyTorch does not
            raise ValueError(f"form={self.form!r} is not accepted; accepted: {', '.join(FORMS)}")
        check_momentum(self.momentum)
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta={self.delta} is out of range; accepted: 0 <= delta <= 1")


class DeltaMomentum(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, delta: float = 0.5,
                 form: str = "matrix", weight_decay: float = 0.0):
        DeltaMomentumParams(momentum=momentum, delta=delta, form=form)  # validates
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, delta=delta, form=form, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        for group in self.param_groups:
            params, bufs = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:  # also for parameters Avalanche added later
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                buf = state["momentum_buffer"]
                if group["delta"] > 0:
                    self._delta_decay(buf, g, state, group)
                buf.mul_(group["momentum"]).add_(g)
                params.append(p)
                bufs.append(buf)
            if params:
                torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss

    def _delta_decay(self, buf, g, state, group):
        """buf ← D_g(buf) in place (the α factor is applied by the caller)."""
        lam, form = group["delta"], group["form"]
        g_sq = g.square().sum()
        if form == "scalar":
            history = state.get("grad_sq_ema")
            ratio = g_sq / history if history is not None and history > 0 else g_sq.new_tensor(1.0)
            if g_sq == 0:
                ratio = g_sq  # no gradient, no surprise: pure α decay
            state["grad_sq_ema"] = g_sq if history is None else history * NORM_EMA + g_sq * (1 - NORM_EMA)
            buf.mul_(1 - lam * ratio / (1 + ratio))
            return
        if g_sq == 0:
            return  # ĝ undefined: only the α decay applies
        if form == "projection" or buf.ndim < 2:
            buf.sub_(g, alpha=float(lam * (buf * g).sum() / g_sq))
            return
        b, gm = as_matrix(buf), as_matrix(g)
        out, inner = gm.shape
        # b ĝᵀĝ, multiplied in the cheaper order (ĝᵀĝ is inner × inner, b ĝᵀ is out × out).
        proj = (b @ gm.T) @ gm if out <= inner else b @ (gm.T @ gm)
        b.sub_(proj, alpha=float(lam / g_sq))
