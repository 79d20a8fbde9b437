"""DGD, Delta Gradient Descent for linear layers (Nested Learning Eq. 56–57, App. C; spec §4.5).

Plain GD on y = W x is one proximal step on ⟨W x, ∇_y L⟩. DGD replaces the linear inner
objective by an L2 regression onto the self-generated value u = −∇_y L:

    W_{t+1} = argmin_W ½‖W x − u‖² + 1/(2η) ‖W − W_t‖²
            = W_t (I − η′ x xᵀ) − η′ ∇_y L xᵀ,        η′ = η / (1 + η ‖x‖²)     (Sherman–Morrison)

i.e. a gradient step plus a decay of W along the current input direction. For a minibatch of n
rows x_b with a mean-reduced loss (so ∇_{y_b} L = ∇ℓ_b / n) we solve the batch objective
(1/n) Σ_b ½‖W x_b − u_b‖² + 1/(2η)‖W − W_t‖² with u_b = −∇ℓ_b, whose minimiser is

    W_{t+1} = (W_t − η G) (I + (η/n) X Xᵀ)⁻¹,          G = ∇_W L = Σ_b ∇_{y_b} L x_bᵀ,

computed with whichever of (I + (η/n) XXᵀ) (in × in) or, by Woodbury, I_n + (η/n) XᵀX (n × n)
is smaller, through a Cholesky solve. For n = 1 it is exactly the formula above (tested against
a numerical argmin). `dgd_linear_update` is that function, for HOPE's memories later.

`normalize_inputs` (default True) uses unit-norm rows x/‖x‖ in the decay term. The paper derives
the closed form for normalized inputs (‖x‖² = λ; Titans/HOPE L2-normalize keys), while raw
activations of an MLP have ‖x‖² ≫ 1 (784 MNIST pixels), where the exact decay shrinks W by a
factor 1/(1 + η‖x‖²) along x and swamps the gradient step. False is the literal objective.

Use as an optimizer (`--set optimizer=dgd`): the update needs each layer's inputs, which an
optimizer built from a parameter list never sees. `DGD` therefore registers one global
forward hook (torch.nn.modules.module.register_module_forward_hook) that records the input of
every nn.Linear whose weight the optimizer holds, in training mode with autograd on. Inputs
of several forwards between two steps (ER-ACE, replay batches) are stacked; inputs with more
than 2 dims are flattened to rows, so n counts rows (tokens), not samples. At most `max_rows`
recent rows are kept per layer. A bias is handled as an extra input column fixed at 1
(y = [W b][x; 1]), so it decays together with W. `p.grad` is used as G, so loss terms
added by strategies (EWC, LwF, …) still reach the weights; only the decay uses the inputs.
Every other parameter (convolutions, norms, layers called through F.linear, a Linear whose
input was not captured) takes a plain SGD step. Weight decay is L2 in the gradient, as in SGD.
Captures are dropped at `zero_grad` and after `step`, so evaluation forwards never leak in.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from clbench.nested.optim.common import run_closure


@dataclass
class DGDParams:
    input_decay: float = 1.0  # scale of the (η/n) X Xᵀ term: 1 = DGD, 0 = plain SGD
    normalize_inputs: bool = True  # decay along unit-norm inputs (the paper's ‖x‖² = λ setting)
    max_rows: int = 4096  # most recent input rows kept per layer between two steps

    def __post_init__(self):
        if self.input_decay < 0:
            raise ValueError(f"input_decay={self.input_decay} is out of range; accepted: input_decay >= 0")
        if self.max_rows < 1:
            raise ValueError(f"max_rows={self.max_rows} is out of range; accepted: an integer >= 1")


def dgd_linear_update(weight: torch.Tensor, inputs: torch.Tensor, grad: torch.Tensor, lr: float,
                      input_decay: float = 1.0) -> torch.Tensor:
    """Closed-form DGD step for y = W x: returns (W − lr·grad)(I + input_decay·(lr/n) XᵀX)⁻¹.

    weight: (out, in); inputs: (n, in) rows x_b; grad: ∇_W of the mean loss, e.g. Σ_b ∇_{y_b}L x_bᵀ.
    """
    moved = weight - lr * grad
    n, width = inputs.shape
    c = input_decay * lr / n
    if c == 0 or n == 0:
        return moved
    x = inputs.to(moved.dtype)
    if width <= n:  # M (I + c XᵀX)⁻¹: solve the symmetric system from the right
        system = torch.eye(width, dtype=x.dtype, device=x.device) + c * (x.T @ x)
        return torch.cholesky_solve(moved.T, torch.linalg.cholesky(system)).T
    # Woodbury: (I + c XᵀX)⁻¹ = I − c Xᵀ (I_n + c X Xᵀ)⁻¹ X
    small = torch.eye(n, dtype=x.dtype, device=x.device) + c * (x @ x.T)
    coeff = torch.cholesky_solve((moved @ x.T).T, torch.linalg.cholesky(small)).T  # (out, n)
    return moved - c * (coeff @ x)


class DGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.01, weight_decay: float = 0.0, input_decay: float = 1.0,
                 normalize_inputs: bool = True, max_rows: int = 4096):
        DGDParams(input_decay=input_decay, max_rows=max_rows)  # validates
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, input_decay=input_decay,
                                      normalize_inputs=normalize_inputs))
        self.max_rows = max_rows
        self._captures: dict[int, tuple[nn.Linear, list[torch.Tensor]]] = {}  # id(weight) -> inputs
        self._refresh_ids()
        owner = weakref.ref(self)

        def capture(module, args, output):
            opt = owner()
            if opt is not None and isinstance(module, nn.Linear):
                opt._capture(module, args)

        # The hook must not keep the optimizer alive, and must go when the optimizer goes.
        weakref.finalize(self, register_module_forward_hook(capture).remove)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "_captures"):
            self._refresh_ids()

    def zero_grad(self, set_to_none: bool = True):
        super().zero_grad(set_to_none)
        self._captures.clear()
        self._refresh_ids()  # Avalanche appends parameters to param_groups without add_param_group

    def _refresh_ids(self):
        self._ids = {id(p) for group in self.param_groups for p in group["params"]}

    def _capture(self, module: nn.Linear, args):
        if not (module.training and torch.is_grad_enabled() and id(module.weight) in self._ids and args):
            return
        rows = args[0].detach().reshape(-1, module.in_features)
        _, kept = self._captures.setdefault(id(module.weight), (module, []))
        kept.append(rows)
        while len(kept) > 1 and sum(r.shape[0] for r in kept) - kept[0].shape[0] >= self.max_rows:
            kept.pop(0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        groups = {id(p): group for group in self.param_groups for p in group["params"]}
        done: set[int] = set()
        for module, kept in self._captures.values():
            w = module.weight
            group = groups.get(id(w))
            if group is None or w.grad is None:
                continue
            b = module.bias
            with_bias = b is not None and b.grad is not None and id(b) in groups
            x = torch.cat(kept)[-self.max_rows:]
            grad = self._l2(w, group)
            weight = w
            if with_bias:
                x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
                weight = torch.cat([w, b.unsqueeze(1)], dim=1)
                grad = torch.cat([grad, self._l2(b, group).unsqueeze(1)], dim=1)
                done.add(id(b))
            if group["normalize_inputs"]:
                x = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            new = dgd_linear_update(weight, x, grad, group["lr"], group["input_decay"])
            w.copy_(new[:, : w.shape[1]])
            if with_bias:
                b.copy_(new[:, -1])
            done.add(id(w))
        for group in self.param_groups:  # everything DGD did not handle: plain SGD
            rest = [p for p in group["params"] if p.grad is not None and id(p) not in done]
            if rest:
                torch._foreach_add_(rest, [self._l2(p, group) for p in rest], alpha=-group["lr"])
        self._captures.clear()
        return loss

    @staticmethod
    def _l2(p: torch.Tensor, group: dict) -> torch.Tensor:
        return p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
