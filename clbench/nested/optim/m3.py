"""M3, Multi-scale Momentum Muon (Nested Learning Eq. 75 and Algorithm 1; spec §4.7).

CMS applied to the optimizer: a fast momentum M1 (every step) and a slow momentum M2 (every
`slow_every` = f steps, fed with the gradients of the last chunk) are each orthogonalized by
Newton–Schulz and mixed, then divided element-wise by the root of a second moment V (as
printed; see `second_moment` below for where we put √V by default):

    every f steps:  M2 ← M2 + β₃ Σ_chunk g      O2 ← NS_T(M2)                  (Algorithm 1)
    every step:     M1 ← M1 + β₁ g   V ← V + β₂ g²   O1 ← NS_T(M1)
                    W  ← W − η (O1 + α O2) / (√V + ε)

Decisions (docs/deep_optimizers.md has the reasoning):

- Slow update: Algorithm 1's "+β₃" form, not Eq. 75's "−β₂" (spec §4.7 [U]). Doing it after
  the step that closes a chunk is the same as doing it before the first step of the next chunk.
- `momentum_mode`: "accumulate" is the literal sums above (M1, V and M2 never forget, so V acts
  like AdaGrad's accumulator). "ema" (default) reads the betas as decays: M1 ← β₁M1 + (1−β₁)g,
  V ← β₂V + (1−β₂)g² with Adam's bias correction, M2 ← β₃M2 + (1−β₃)·mean_chunk(g). NS is
  scale-invariant, so the (1−β) factors only matter for V.
- `second_moment` says where √V enters. "post" is Algorithm 1 as printed: (O1 + αO2)/(√V + ε).
  It fails in practice: Newton–Schulz spreads mass into entries whose gradient is always zero
  (MNIST's blank border pixels, dead units), where √V = 0, so those entries move by lr·O/ε
  (on P-MNIST it stayed at chance at lr 1e-3 and 1e-5 with ε = 1e-8, and learned only
  with ε = 1e-3). "pre" (default) orthogonalizes the V-normalized momenta instead,
  O1 = NS(M1/(√V + ε)), O2 = NS(M2/(√V + ε)) with V at the slow update: Adam's per-entry
  scaling decides the direction, NS bounds the step, and zero-gradient entries stay put.
  "none" drops V; with α = 0 M3 is then exactly Muon without Nesterov (tested).
- Weight decay is decoupled (as in Muon / AdamW). No per-shape learning-rate rescaling
  (Algorithm 1 has none): with "pre"/"none" the step is an orthogonal-like matrix, so useful
  lr values are Muon-like (3e-3 to 1e-2 on P-MNIST), with "post" much smaller.
- Parameters with fewer than 2 dimensions (biases, norm scales) cannot be orthogonalized; they
  use `fallback`: "adamw" (Adam moments with β₁, β₂, ε and bias correction, decoupled decay)
  or "momentum" (SGD momentum b ← β₁b + g), both always in EMA form, at `fallback_lr`
  (None = η). Conv kernels are orthogonalized as (out, in·kh·kw) matrices.
- Cost: two NS iterations per matrix per step at most (O2 only every f steps), each
  5 × ~6·min(m,n)²·max(m,n) FLOPs; the paper warns M3 may not scale well (§9.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from clbench.nested.optim.common import run_closure
from clbench.nested.optim.newton_schulz import as_matrix, newton_schulz

CHOICES = {
    "ns_poly": ("quintic", "cubic"), "momentum_mode": ("ema", "accumulate"),
    "second_moment": ("pre", "post", "none"), "fallback": ("adamw", "momentum"),
}


@dataclass
class M3Params:
    beta1: float = 0.9  # fast momentum: decay (ema) or scale (accumulate)
    beta2: float = 0.999  # second moment V
    beta3: float = 0.9  # slow momentum
    alpha: float = 1.0  # weight of the slow level; 0 = one level
    slow_every: int = 10  # f: slow-level period in optimizer steps
    eps: float = 1e-8
    ns_steps: int = 5
    ns_poly: Literal["quintic", "cubic"] = "quintic"
    momentum_mode: Literal["ema", "accumulate"] = "ema"
    # Where √V enters: "post" divides the mixed NS output (Algorithm 1 as printed), "pre"
    # orthogonalizes the V-normalized momenta, "none" = Muon-style levels (no V).
    second_moment: Literal["pre", "post", "none"] = "pre"
    fallback: Literal["adamw", "momentum"] = "adamw"  # rule for 1-D parameters
    fallback_lr: float | None = None  # None = the run's lr

    def __post_init__(self):
        # Literal fields are checked by clbench's config layer; repeat it for plain PyTorch use.
        for name, accepted in CHOICES.items():
            if getattr(self, name) not in accepted:
                raise ValueError(f"{name}={getattr(self, name)!r} is not accepted; accepted: {', '.join(accepted)}")
        for name in ("beta1", "beta2", "beta3"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value} is out of range; accepted: 0 <= {name} < 1")
        if self.momentum_mode == "accumulate" and self.beta1 == 0:
            raise ValueError("beta1=0 with momentum_mode='accumulate' never moves M1; accepted: 0 < beta1 < 1")
        if self.alpha < 0:
            raise ValueError(f"alpha={self.alpha} is out of range; accepted: alpha >= 0 (0 = one level)")
        if self.slow_every < 1:
            raise ValueError(f"slow_every={self.slow_every} is out of range; accepted: an integer >= 1")
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps={self.eps} is out of range; accepted: 0 < eps <= 1")
        if not 1 <= self.ns_steps <= 100:
            raise ValueError(f"ns_steps={self.ns_steps} is out of range; accepted: an integer in [1, 100]")
        if self.fallback_lr is not None and self.fallback_lr < 0:
            raise ValueError(f"fallback_lr={self.fallback_lr} is out of range; accepted: >= 0 or None (= lr)")


class M3(torch.optim.Optimizer):
    """Multi-scale Momentum Muon. Keyword arguments are the fields of `M3Params` plus lr, weight_decay."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, **options):
        opts = M3Params(**options)  # validates
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be >= 0")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, **vars(opts)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                if p.ndim >= 2:
                    self._matrix_step(p, state, group)
                else:
                    self._fallback_step(p, state, group)
        return loss

    def _matrix_step(self, p, state, group):
        g = p.grad
        ema = group["momentum_mode"] == "ema"
        two_levels = group["alpha"] > 0
        where = group["second_moment"]
        if "m1" not in state:  # also after Avalanche added a parameter with empty state
            state["m1"] = torch.zeros_like(p)
            if where != "none":
                state["v"] = torch.zeros_like(p)
        if two_levels and "m2" not in state:
            state["m2"], state["chunk"] = torch.zeros_like(p), torch.zeros_like(p)
            state["o2"] = torch.zeros_like(p)  # NS(0) = 0 until the first chunk closes

        m1 = state["m1"]
        if ema:
            m1.lerp_(g, 1 - group["beta1"])
        else:
            m1.add_(g, alpha=group["beta1"])
        denom = None
        if where != "none":
            v = state["v"]
            if ema:
                v.mul_(group["beta2"]).addcmul_(g, g, value=1 - group["beta2"])
                denom = (v / (1 - group["beta2"] ** state["step"])).sqrt_().add_(group["eps"])
            else:
                v.addcmul_(g, g, value=group["beta2"])
                denom = v.sqrt().add_(group["eps"])
        update = self._orthogonalize(m1 / denom if where == "pre" else m1, group)
        if two_levels:
            state["chunk"].add_(g)
            update.add_(state["o2"], alpha=group["alpha"])
        if where == "post":
            update.div_(denom)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"])

        if two_levels and state["step"] % group["slow_every"] == 0:
            m2, chunk = state["m2"], state["chunk"]
            if ema:
                m2.lerp_(chunk.div_(group["slow_every"]), 1 - group["beta3"])
            else:
                m2.add_(chunk, alpha=group["beta3"])
            chunk.zero_()
            state["o2"] = self._orthogonalize(m2 / denom if where == "pre" else m2, group)

    @staticmethod
    def _orthogonalize(m: torch.Tensor, group) -> torch.Tensor:
        return newton_schulz(as_matrix(m), group["ns_steps"], group["ns_poly"]).reshape(m.shape)

    def _fallback_step(self, p, state, group):
        g = p.grad
        lr = group["lr"] if group["fallback_lr"] is None else group["fallback_lr"]
        beta1, beta2 = group["beta1"], group["beta2"]
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        if group["fallback"] == "momentum":
            buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
            buf.mul_(beta1).add_(g)
            p.add_(buf, alpha=-lr)
            return
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(group["eps"])
        p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
