"""DMGD, Deep Momentum Gradient Descent (Nested Learning Eq. 50; spec §4.4 item 3).

Eq. 50 makes the momentum a small network m(·) whose parameters φ are trained, one gradient
step per optimizer step and with retention, on an internal objective L⁽²⁾, and moves the
weights by the network's output on the current gradient:

    φ ← φ₀ + α (φ − η_φ ∇_φ L⁽²⁾(φ; u) − φ₀)        (write: one GD step, then retention α)
    d = P_φ(u)                                        (read after the write, as in Eq. 50)
    b ← μ b + d,   W ← W − lr · b                     (torch SGD-momentum convention)

where u = ∇L + weight_decay·W. The memory P_φ acts on gradient *tokens*: each gradient is
flattened and cut into slices of `token_dim` entries (the last one zero-padded), so one shared
memory serves every parameter of every shape, including parameters Avalanche adds later. It is
a residual low-rank ReLU MLP without biases,

    P_φ(x) = x + U relu(V x),   V ∈ R^{h×d} random,  U ∈ R^{d×h} zero at init,

so at init (and whenever U = 0) P_φ is the identity and DMGD is exactly SGD with momentum μ
(tested bit for bit). Without biases P_φ is positively homogeneous, P_φ(c x) = c P_φ(x), so the
memory changes directions and relative sizes but never the gradient's overall scale: lr keeps
its SGD meaning. Retention decays φ towards its initial value φ₀, i.e. towards plain momentum.

Internal objectives (`objective`), both on a strided subsample of `memory_tokens` tokens whose
offset rotates every step so every token is visited:

- "precond" (default; spec's DMGD-precond): a learned preconditioner trained on the
  orthogonality objective of Eq. 43 written for tokens: with unit-norm tokens x̂ and
  C = mean P_φ(x̂) P_φ(x̂)ᵀ, minimise ‖C / s − I‖²_F / d, s = mean‖x̂‖² / d. The memory learns
  to shrink the dominant gradient directions and lift the weak ones (whitening), which is what
  Newton–Schulz does to the singular values in Muon; s keeps the trace, hence the step size.
- "l2_recon" (spec's DMGD-L2-recon): an L2 regression from the current gradient to the
  history: minimise ½‖P_φ(x) − (1 − μ) b_prev‖² (both sides divided by the larger of the two
  token norms), where (1 − μ) b_prev is the momentum before this step scaled to a
  gradient-sized average (with μ = 0 it is the previous direction). The memory learns which
  part of an instantaneous gradient the recent history agrees with, i.e. denoises it. The
  spec's literal target −u is degenerate with a residual memory (P = I already reconstructs
  it, so the memory would learn nothing); the history target is the non-trivial version.

Why not the paper's example objective ⟨m(u), 1⟩: it is linear in the memory output, so its
gradient ignores what the memory stores. For a linear memory m(u) = M u the step adds
−η 1 uᵀ to M: every output coordinate receives the same similarity score uᵀu′, the update is
a constant vector rather than a descent direction, and the objective is unbounded below, so
without retention M grows forever. An MLP memory has the same problem (all outputs are pushed
down uniformly, whatever u's direction).

Persistence (D12): φ lives in `optimizer.state["dmgd_memory"]` (torch's Optimizer allows a
non-parameter key; state_dict/load_state_dict keep it). `add_param_group` and Avalanche's
`update_optimizer` only add parameters, so the memory survives experience boundaries;
Avalanche's `reset_optimizer_state=True` replaces `optimizer.state`, which resets φ to φ₀
together with the momentum buffers (same seed, same φ₀).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from clbench.kernels.dmgd_mlp import dmgd_mlp_inner_grad, dmgd_mlp_read, read_chunk, resolve_impl
from clbench.nested.optim.common import check_momentum, run_closure

MEMORY_KEY = "dmgd_memory"
OBJECTIVES = ("precond", "l2_recon")
ROTATE = 7919  # prime step of the subsample offset, so successive steps see different tokens


@dataclass
class DMGDParams:
    objective: Literal["precond", "l2_recon"] = "precond"
    momentum: float | None = None  # μ; None = the run's train.momentum if > 0, else 0.9
    token_dim: int = 32  # d: gradient slice length the memory sees
    hidden: int = 8  # h: rank of the memory's correction
    memory_lr: float = 0.05  # η_φ; 0 freezes the memory (identity: SGD with momentum)
    retention: float = 0.999  # α: per-step decay of φ towards its initial value
    memory_tokens: int = 1024  # tokens per memory write (subsample)
    memory_seed: int = 0  # initialisation of V (private generator: the global RNG is untouched)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:  # clbench's config layer checks it too; plain PyTorch does not
            raise ValueError(f"objective={self.objective!r} is not accepted; accepted: {', '.join(OBJECTIVES)}")
        check_momentum(self.momentum)
        if not 2 <= self.token_dim <= 4096:
            raise ValueError(f"token_dim={self.token_dim} is out of range; accepted: an integer in [2, 4096]")
        if not 1 <= self.hidden <= 1024:
            raise ValueError(f"hidden={self.hidden} is out of range; accepted: an integer in [1, 1024]")
        if self.memory_lr < 0:
            raise ValueError(f"memory_lr={self.memory_lr} is out of range; accepted: memory_lr >= 0")
        if not 0.0 < self.retention <= 1.0:
            raise ValueError(f"retention={self.retention} is out of range; accepted: 0 < retention <= 1")
        if self.memory_tokens < 1:
            raise ValueError(f"memory_tokens={self.memory_tokens} is out of range; accepted: an integer >= 1")


class DMGD(torch.optim.Optimizer):
    """Keyword arguments: lr, momentum, weight_decay, and the other fields of `DMGDParams`.

    impl: how the memory's read and write run (`clbench.kernels.dmgd_mlp`): "auto" (the
    fused Triton kernels for CUDA float32 gradients, else the PyTorch reference "chunk"),
    "chunk", "naive" or "triton". A runtime choice, not an option of the run's config.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                 impl: str = "auto", **options):
        self.options = DMGDParams(momentum=momentum, **options)  # validates
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr} and weight_decay={weight_decay} must be >= 0")
        resolve_impl(impl, torch.zeros(1, self.options.token_dim), self.options.hidden)  # validates
        self.impl = impl
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @property
    def memory(self) -> dict | None:
        """φ and its bookkeeping, or None before the first step / after a reset."""
        return self.state.get(MEMORY_KEY)

    @torch.no_grad()
    def step(self, closure=None):
        loss = run_closure(closure)
        items = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    wd = group["weight_decay"]
                    items.append((p, p.grad if wd == 0 else p.grad.add(p, alpha=wd), group))
        if not items:
            return loss
        mem = self._memory_like(items[0][1])
        mem["step"] += 1
        impl = resolve_impl(self.impl, mem["V"], self.options.hidden)  # once per step
        tokens = [_tokens(u, self.options.token_dim) for _, u, _ in items]
        if self.options.memory_lr > 0:
            self._write(mem, tokens, items, impl)
        updates: dict[int, tuple[list, list, list]] = {}
        for (p, u, group), x in zip(items, tokens, strict=True):
            state = self.state[p]
            if "momentum_buffer" not in state:  # also for parameters Avalanche added later
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            direction = dmgd_mlp_read(x, mem["V"], mem["U"], impl=impl, check=False)
            direction = direction.reshape(-1)[: u.numel()].view_as(u)
            ps, bufs, dirs = updates.setdefault(id(group), ([], [], []))
            ps.append(p)
            bufs.append(state["momentum_buffer"])
            dirs.append(direction)
        for group in self.param_groups:
            if id(group) in updates:
                ps, bufs, dirs = updates[id(group)]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, dirs)
                torch._foreach_add_(ps, bufs, alpha=-group["lr"])
        return loss

    def _memory_like(self, like: torch.Tensor) -> dict:
        mem = self.state.get(MEMORY_KEY)
        if mem is None:
            d, h = self.options.token_dim, self.options.hidden
            gen = torch.Generator().manual_seed(self.options.memory_seed)
            v0 = (torch.randn(h, d, generator=gen) / d**0.5).to(like.device, like.dtype)
            mem = {"V": v0.clone(), "U": like.new_zeros(d, h), "V0": v0, "step": 0, "loss": None}
            self.state[MEMORY_KEY] = mem
        return mem

    def _write(self, mem: dict, tokens: list[torch.Tensor], items: list, impl: str) -> None:
        """One GD step of φ on the internal objective, then retention towards φ₀."""
        opts = self.options
        total = sum(x.shape[0] for x in tokens)
        stride = max(1, total // opts.memory_tokens)
        offset = (mem["step"] * ROTATE) % stride
        rows, targets = [], []
        for x, (p, _, group) in zip(tokens, items, strict=True):
            if opts.objective == "l2_recon":
                buf = self.state[p].get("momentum_buffer")
                if buf is None:  # first step of this parameter: no history to regress onto
                    continue
                targets.append(_tokens(buf, opts.token_dim)[offset::stride] * (1 - group["momentum"]))
            rows.append(x[offset::stride])
        if not rows or sum(r.shape[0] for r in rows) == 0:
            return
        loss, grad_v, grad_u = dmgd_mlp_inner_grad(
            torch.cat(rows), mem["V"], mem["U"], objective=opts.objective,
            target=torch.cat(targets) if targets else None, impl=impl,
        )  # fmt: skip
        alpha = opts.retention
        mem["V"].sub_(grad_v, alpha=opts.memory_lr).sub_(mem["V0"]).mul_(alpha).add_(mem["V0"])
        mem["U"].sub_(grad_u, alpha=opts.memory_lr).mul_(alpha)  # U₀ = 0
        mem["loss"] = float(loss)


def _tokens(t: torch.Tensor, d: int) -> torch.Tensor:
    """(ceil(n / d), d) view of the flattened tensor; a copy only when padding is needed."""
    flat = t.reshape(-1)
    pad = (-flat.numel()) % d
    return (F.pad(flat, (0, pad)) if pad else flat).view(-1, d)


def _read(mem: dict, x: torch.Tensor) -> torch.Tensor:
    """P_φ(x) = x + U relu(V x) for a batch of row tokens (the PyTorch reference)."""
    return read_chunk(x, mem["V"], mem["U"])
