"""Self-modifying Titans: the sequence layer of HOPE (nested_learning.md §6.2-6.4, Eq. 83-94).

Per token t, with every memory read at the state of the start of t's chunk (§6.3, floor index):
  k_t = l2norm(M_k(x_t)), v_t = l2norm(M_v(x_t)), q_t = l2norm(W_q x_t)   (adaptive q is an option)
  eta_t, alpha_t = scalar readouts of M_eta(x_t), M_alpha(x_t)      (per head)
  v_hat_{m,t} = M_m(v_t) for every memory m (self-generated values, Eq. 84)
  every memory m learns (k_t -> v_hat_{m,t}) by the DGD rule (Eq. 88; memory.py)
  o_t = M_mem,t-1(q_t)                                              (read before write, Eq. 94)
then output norm, gate and projection (Titans §4.4).

Choices where the paper is silent [U], all recorded in the model config:
- "x_t" of each projection is a static linear map of the layer input followed by a causal
  depthwise conv (window 4) and SiLU (Titans §4.4); a static projection feeding the memory
  keeps k, v, q, eta, alpha distinct at initialisation, and a non-adaptive projection
  ("static k", Table 6) is that same map without the memory.
- eta and alpha are scalars per head: eta = eta_max * sigmoid(<w, M_eta(x)> + b) and
  alpha = sigmoid(<w, M_alpha(x)> + b) (kmc uses 1-wide heads the same way). Retention off
  ("w/o weight decay") fixes alpha = 1.
- eta and alpha are shared by all memories of the layer (each memory has its own values).
- v is l2-normalised like q and k (Titans normalises only q and k; `normalize_v=false` is the
  literal form). Each memory chases its own reading of v (v_hat = M(v)) from keys k; with
  ||v|| > ||k|| = 1 that loop raises the memory's gain every chunk, and at the quick profile
  the memories overflowed to inf within one 17-token image after ~100 training steps. Unit
  values keep the targets on the scale of the memory's own outputs.
- Momentum (on: the paper's model, Table 6 "w/o momentum" is its ablation) in the Titans form
  (§3.2): m_t = mu_t m_{t-1} + [DGD step], M_t = alpha_t M_{t-1} + m_t, with the forget gate
  outside the momentum and a data-dependent gate mu_t = sigmoid(x_t W_mu + b) per head and
  token, read from the layer input by a static linear map as Titans does (the paper gives M_eta
  and M_alpha but no M_mu). Shared by every memory of the layer, like eta and alpha.
  `momentum_form=inner` keeps clbench's first form: retention inside the momentum, one static
  gate per memory.
- Two chunk sizes as in the paper: `chunk_other` for the projection memories (k, v, q, eta,
  alpha), `chunk_mem` for the main memory. A sequence length that is not a multiple of a chunk
  size ends with a shorter chunk (same semantics as the token loop, nothing padded).
- The projection memories never read the main memory, so they run first over the whole
  sequence (sequential over their chunks), then the main memory runs over its own chunks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clbench.errors import NonFiniteLossError
from clbench.nested.hope.dual import DualBank, shared_start
from clbench.nested.hope.dual_gates import Gates
from clbench.nested.hope.memory import (
    KERNEL_CHOICES,
    MOMENTUM_FORMS,
    W1_STEPS,
    InnerRule,
    make_memory,
)

PROJECTIONS = ("k", "v", "q", "eta", "alpha")
RESET_POLICIES = ("example", "experience", "never")


@dataclass(frozen=True)
class TitansOptions:
    heads: int = 4
    memory: str = "mlp"  # linear | mlp (Eq. 89/91)
    memory_hidden_mult: int = 2  # MLP memory hidden width = mult * head dim
    chunk_other: int = 4  # projection memories
    chunk_mem: int = 8  # main memory
    dgd: bool = True
    momentum: bool = True  # the paper's full model; off = Table 6's "w/o momentum"
    momentum_form: str = "titans"  # titans | inner (see the module docstring)
    retention: bool = True
    adaptive_k: bool = True
    adaptive_v: bool = True
    adaptive_q: bool = False  # "q_t = x_t W_q is the only non-adaptive projection" (§6.2)
    normalize_v: bool = True  # unit v (see the module docstring); false: the paper's literal v
    w1_step: str = "normalized"  # MLP memories' W1 step: normalized | plain (memory.w1_step)
    stop_grad_writes: bool = False  # D10: default differentiates through the inner writes
    eta_max: float = 0.5
    conv_window: int = 4
    kernels: str = "auto"  # auto (Triton on CUDA) | reference (PyTorch everywhere) | triton

    def __post_init__(self):
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNEL_CHOICES))}, got {self.kernels!r}")
        if self.memory not in ("linear", "mlp"):
            raise ValueError(f"memory must be 'linear' or 'mlp', got {self.memory!r}")
        if self.momentum_form not in MOMENTUM_FORMS:
            raise ValueError(f"momentum_form must be one of {', '.join(map(repr, MOMENTUM_FORMS))}, "
                             f"got {self.momentum_form!r}")
        if self.w1_step not in W1_STEPS:
            raise ValueError(f"w1_step must be one of {', '.join(map(repr, W1_STEPS))}, got {self.w1_step!r}")
        if self.momentum and self.kernels == "triton":
            raise ValueError("kernels='triton' has no momentum kernel yet; with momentum on use kernels "
                             "'auto' or 'reference' (the chunked PyTorch form runs on any device)")
        for name in ("heads", "memory_hidden_mult", "chunk_other", "chunk_mem", "conv_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 < self.eta_max <= 2:
            # With l2-normalised keys the DGD factor alpha - eta k k^T has eigenvalue alpha - eta;
            # eta > 2 would make it expansive for every alpha.
            raise ValueError(f"eta_max must be in (0, 2], got {self.eta_max}")

    @property
    def adaptive(self) -> tuple[str, ...]:
        """Projections produced by an in-context memory (eta and alpha always are)."""
        flags = {"k": self.adaptive_k, "v": self.adaptive_v, "q": self.adaptive_q, "eta": True, "alpha": True}
        return tuple(p for p in PROJECTIONS if flags[p])

    def to_dict(self) -> dict:
        return asdict(self)


class CausalDepthwiseConv(nn.Module):
    def __init__(self, channels: int, window: int):
        super().__init__()
        self.window = window
        self.conv = nn.Conv1d(channels, channels, window, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C]
        # The conv's own parameters, applied as `window` shifted multiply-adds on the token-major
        # layout: at these sizes (T ~ 17, a window of 4) that is 2-4x faster forward + backward than
        # aten's depthwise convolution (whose backward dominated), and equal to rounding.
        # Taps as contiguous rows [window, C]: a strided weight column would put every
        # multiply-add on TensorIterator's slow (non-vectorised) path.
        w, t = self.conv.weight[:, 0].t().contiguous(), x.shape[1]
        padded = F.pad(x, (0, 0, self.window - 1, 0))  # left pad only: causal
        out = torch.addcmul(self.conv.bias, padded[:, self.window - 1:], w[-1])
        for j in range(self.window - 1):
            out = torch.addcmul(out, padded[:, j:j + t], w[j])
        return out


class SelfModifyingTitans(nn.Module):
    def __init__(self, d_model: int, options: TitansOptions, name: str = "titans"):
        super().__init__()
        if d_model % options.heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={options.heads}")
        self.options, self.name = options, name
        self.heads, self.head_dim = options.heads, d_model // options.heads
        self.reset_policy = "example"
        self.dual_path = True  # see uses_dual
        self.carried: dict[str, dict[str, torch.Tensor]] | None = None
        h, dh = self.heads, self.head_dim
        rule = InnerRule(options.dgd, options.momentum, options.momentum_form, options.w1_step,
                         options.stop_grad_writes, options.kernels)
        hidden = options.memory_hidden_mult * dh

        self.proj = nn.Linear(d_model, len(PROJECTIONS) * d_model, bias=False)
        self.conv = CausalDepthwiseConv(len(PROJECTIONS) * d_model, options.conv_window)
        self.proj_memory = make_memory(options.memory, len(options.adaptive) * h, dh, hidden, rule)
        self.main_memory = make_memory(options.memory, h, dh, hidden, rule)
        self.eta_readout = nn.Parameter(torch.randn(h, dh) / dh)
        self.eta_bias = nn.Parameter(torch.full((h,), -2.0))  # eta ~ 0.12 eta_max at start
        self.alpha_readout = nn.Parameter(torch.randn(h, dh) / dh)
        self.alpha_bias = nn.Parameter(torch.full((h,), 3.0))  # alpha ~ 0.95 at start
        # Titans-form momentum gate mu_t = sigmoid(x_t W_mu + b), per head; bias 0: mu ~ 0.5 at start.
        self.momentum_gate = nn.Linear(d_model, h) if options.momentum and options.momentum_form == "titans" else None
        if self.momentum_gate is not None:
            nn.init.zeros_(self.momentum_gate.bias)
        self.out_norm = nn.RMSNorm(dh)
        self.gate = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    # ----------------------------------------------------------------- shared with the naive reference
    def projected_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, 5, H, dh]: the static projection, causal conv and SiLU feeding each projection."""
        b, t, _ = x.shape
        return F.silu(self.conv(self.proj(x))).view(b, t, len(PROJECTIONS), self.heads, self.head_dim)

    def rates(self, eta_features: torch.Tensor, alpha_features: torch.Tensor):
        """Scalar eta, alpha per token and head from the memories' outputs [B, n, H, dh]."""
        eta = self.options.eta_max * torch.sigmoid((eta_features * self.eta_readout).sum(-1) + self.eta_bias)
        if not self.options.retention:
            return eta, torch.ones_like(eta)
        # Floor: alpha = 0 would have no logarithm in the chunked form's log-space gates.
        alpha = torch.sigmoid((alpha_features * self.alpha_readout).sum(-1) + self.alpha_bias)
        return eta, alpha.clamp_min(1e-6)

    def momentum_gates(self, x: torch.Tensor) -> torch.Tensor | None:
        """mu_t [B, H, T] of the Titans-form momentum (None without it). Floored like alpha: the
        chunked form takes its logarithm."""
        if self.momentum_gate is None:
            return None
        return torch.sigmoid(self.momentum_gate(x)).clamp_min(1e-6).transpose(1, 2)

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-head norm, SiLU gate from the layer input, output projection."""
        b, t = x.shape[:2]
        o = self.out_norm(o).reshape(b, t, -1)
        return self.out_proj(o * F.silu(self.gate(x)))

    def start_states(self, batch: int):
        """Meta-learned initial states, plus what was carried over when the reset policy keeps it (D4)."""
        states = {"proj": self.proj_memory.init_state(batch), "main": self.main_memory.init_state(batch)}
        if self.carried is None:
            return states
        return {bank: {k: v + self.carried[bank][k] for k, v in s.items()} for bank, s in states.items()}

    def carry_over(self, final) -> None:
        """Keep the batch-mean change of the fast states for the next batch (reset policy != example)."""
        init = {"proj": self.proj_memory.init_state(1), "main": self.main_memory.init_state(1)}
        self.carried = {
            bank: {k: (v - init[bank][k]).mean(0, keepdim=True).detach() for k, v in s.items()}
            for bank, s in final.items()
        }

    def reset_fast_state(self) -> None:
        self.carried = None

    # ----------------------------------------------------------------- chunked forward
    # Head-major inside: tokens [B, H, T, dh], rates [B, H, T] (memory.py's layout).
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_dual(x):
            return self._forward_dual(x)
        opts, (b, t, _) = self.options, x.shape
        states = self.start_states(b)
        mu = self.momentum_gates(x)
        k, v, q, eta, alpha, states["proj"] = self.generate(self.projected_inputs(x), states["proj"], mu)
        outputs, main = [], states["main"]
        for start in range(0, t, opts.chunk_mem):
            c = slice(start, start + opts.chunk_mem)
            main, o = self.main_memory.self_update(main, k[:, :, c], v[:, :, c], eta[:, :, c], alpha[:, :, c],
                                                   q[:, :, c], None if mu is None else mu[:, :, c])
            outputs.append(o)
        o = torch.cat(outputs, dim=2).transpose(1, 2)  # [B, T, H, dh]
        self.check_finite(k=k.transpose(1, 2), v=v.transpose(1, 2), eta=eta.transpose(1, 2),
                          alpha=alpha.transpose(1, 2), read=o)
        if self.training and self.reset_policy != "example":
            self.carry_over({"proj": states["proj"], "main": main})
        return self.output(o, x)

    def generate(self, z: torch.Tensor, state, mu: torch.Tensor | None = None):
        """k, v, q [B, H, T, dh] and eta, alpha [B, H, T] from `projected_inputs` z, chunk by
        chunk, advancing the projection memories (momentum gates mu [B, H, T] or None); also
        returns their final state."""
        start = shared_start(state) if self.uses_dual(z) else None
        if start is not None:
            k, v, q, eta, alpha, bank = self._dual_projections(z, start, self._heads_outer(mu))
            made = (self._heads_inner(y) for y in (k, v, q, eta, alpha))
            return (*made, bank.final_state(start))
        opts, adaptive = self.options, self.options.adaptive
        n_mem, (b, t, _, h, dh) = len(adaptive), z.shape
        z = z.permute(0, 2, 3, 1, 4)  # [B, 5, H, T, dh]
        inputs = z[:, [PROJECTIONS.index(p) for p in adaptive]].reshape(b, n_mem * h, t, dh)
        pieces = []
        for start in range(0, t, opts.chunk_other):
            c = slice(start, start + opts.chunk_other)
            read = self.proj_memory.read(state, inputs[:, :, c]).view(b, n_mem, h, -1, dh)
            made = {p: read[:, adaptive.index(p)] if p in adaptive else z[:, PROJECTIONS.index(p), :, c]
                    for p in PROJECTIONS}
            k, q = F.normalize(made["k"], dim=-1), F.normalize(made["q"], dim=-1)
            v = F.normalize(made["v"], dim=-1) if opts.normalize_v else made["v"]  # see the module docstring
            eta, alpha = self.rates(made["eta"].transpose(1, 2), made["alpha"].transpose(1, 2))
            eta, alpha = eta.transpose(1, 2), alpha.transpose(1, 2)
            # Every projection memory learns (k -> its own reading of v), Eq. 84-85.
            keys = k.repeat(1, n_mem, 1, 1)
            gate = None if mu is None else mu[:, :, c].repeat(1, n_mem, 1)
            state, _ = self.proj_memory.self_update(
                state, keys, v.repeat(1, n_mem, 1, 1), eta.repeat(1, n_mem, 1), alpha.repeat(1, n_mem, 1), keys, gate
            )
            pieces.append((k, v, q, eta, alpha))
        k, v, q, eta, alpha = (torch.cat(parts, dim=2) for parts in zip(*pieces, strict=True))
        return k, v, q, eta, alpha, state

    # ----------------------------------------------------------------- dual form (CPU fast path)
    def uses_dual(self, x: torch.Tensor) -> bool:
        """Whether a pass runs the dual form (dual.py): on CPU, with the Titans-form momentum or
        none, differentiated writes, and no momentum carried over from an earlier batch (the
        dual form starts from zero momentum). `dual_path = False` keeps the chunked closed forms."""
        opts = self.options
        if not self.dual_path or x.device.type != "cpu" or opts.kernels == "triton" or opts.stop_grad_writes:
            return False
        return not opts.momentum or (opts.momentum_form == "titans" and self.carried is None)

    def _heads_outer(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """[B, H, ...] -> [H*B, ...] (dual.py's layout)."""
        return None if x is None else x.transpose(0, 1).reshape(-1, *x.shape[2:])

    def _heads_inner(self, x: torch.Tensor) -> torch.Tensor:
        """[H*B, ...] -> [B, H, ...] (a view)."""
        return x.view(self.heads, -1, *x.shape[1:]).transpose(0, 1)

    def _forward_dual(self, x: torch.Tensor) -> torch.Tensor:
        (b, t, _), h = x.shape, self.heads
        start = {bank: shared_start(s) for bank, s in self.start_states(1).items()}
        mu = self._heads_outer(self.momentum_gates(x))
        k, v, q, eta, alpha, proj = self._dual_projections(self.projected_inputs(x), start["proj"], mu)
        gates = Gates(mu, k)
        gates.extend(alpha)  # the main memory's gates are known for every token
        g, gamma = gates.rows(-1, t, t)
        main = DualBank(self.main_memory, start["main"], h, b, gates)
        o = main.main_reads(k, v, q, eta[:, :, None], g, gamma, self.options.chunk_mem)
        token_major = [y.view(h, b, t, -1).permute(1, 2, 0, 3) for y in (k, v, eta[..., None], alpha[..., None], o)]
        self.check_finite(**dict(zip(("k", "v", "eta", "alpha", "read"), token_major, strict=True)))
        if self.training and self.reset_policy != "example":
            self.carry_over({"proj": proj.final_state(start["proj"]), "main": main.final_state(start["main"])})
        return self.output(token_major[-1], x)

    def _dual_projections(self, z: torch.Tensor, start, mu: torch.Tensor | None):
        """`generate` in the dual form from shared start matrices and gates mu [H*B, T]: k, v, q
        [H*B, T, dh], eta, alpha [H*B, T] and the projection bank (for its final state)."""
        opts, adaptive = self.options, self.options.adaptive
        (b, t, _, h, dh), m, step = z.shape, len(adaptive), opts.chunk_other
        z = z.permute(3, 0, 1, 2, 4).contiguous()  # [H, B, T, 5, dh]
        picked = torch.tensor([PROJECTIONS.index(p) for p in adaptive], device=z.device)
        rows = z.index_select(3, picked).view(h * b, t, m, dh)
        static = {p: z[:, :, :, PROJECTIONS.index(p)].reshape(h * b, t, dh) for p in PROJECTIONS if p not in adaptive}
        for p in set(static) & {"k", "q", "v"}:  # static k, v, q are normalised once, for every token
            if p != "v" or opts.normalize_v:
                static[p] = F.normalize(static[p], dim=-1)
        # memories whose reads are normalised; k and v together when both are adaptive (indices 0, 1)
        unit = [p for p in ("k", "v", "q") if p in adaptive and (p != "v" or opts.normalize_v)]
        rates = self._dual_rates()
        gates = Gates(mu, rows)
        bank = DualBank(self.proj_memory, start, h, b, gates)
        bank.prepare(rows, rows.permute(2, 0, 1, 3).reshape(m * h * b, t, dh), step)
        static = {p: x.split(step, dim=1) for p, x in static.items()}
        write = bank.write_linear if bank.linear else bank.write_mlp
        g_snap, gamma_snap = rows.new_zeros(h * b, 1, 0), rows.new_ones(h * b, 1, 1)
        pieces = []
        for i, c in enumerate(range(0, t, step)):
            e = min(c + step, t)
            read = bank.read(i, g_snap, gamma_snap)  # [M, H*B, e - c, dh]
            made = dict(zip(adaptive, read.unbind(0), strict=True))
            rest = unit
            if unit[:2] == ["k", "v"]:
                made["k"], made["v"] = F.normalize(read[:2], dim=-1).unbind(0)
                rest = unit[2:]
            made.update({p: F.normalize(made[p], dim=-1) for p in rest})
            made.update({p: x[i] for p, x in static.items()})
            eta, alpha = rates(read[-2:])  # eta and alpha are always the last two memories
            gates.extend(alpha)
            g, gamma = gates.rows(c - 1, e, e)  # rows c-1 .. e-1: each token's S_{t-1}, then the next snapshot
            (g_rows, g_next), (gamma_rows, gamma_next) = g.split([e - c, 1], dim=1), gamma.split([e - c, 1], dim=1)
            write(made["k"], made["v"], eta[:, :, None], g_snap, gamma_snap, g_rows, gamma_rows)
            g_snap, gamma_snap = g_next, gamma_next
            pieces.append((made["k"], made["v"], made["q"], eta, alpha))
        k, v, q, eta, alpha = (torch.cat(parts, dim=1) for parts in zip(*pieces, strict=True))
        return k, v, q, eta, alpha, bank

    def _dual_rates(self):
        """`rates` for dual.py's layout: a function from the eta and alpha memories' reads
        [2, H*B, n, dh] to eta, alpha [H*B, n]. It calls `rates` itself, so the gates have one
        definition (and a replaced `rates` hook reaches the dual path too)."""
        h = self.heads

        def dual_layout(features):
            eta, alpha = self.rates(*(f.view(h, -1, *f.shape[1:]).permute(1, 2, 0, 3) for f in features))
            return (r.permute(2, 0, 1).reshape(-1, r.shape[1]) for r in (eta, alpha))
        return dual_layout

    def check_finite(self, **tensors: torch.Tensor) -> None:
        """Stop at the first non-finite value of the inner loop, naming the layer, quantity and step."""
        for what, tensor in tensors.items():
            bad = ~torch.isfinite(tensor)
            if bad.any():
                step = int(bad.reshape(bad.shape[0], bad.shape[1], -1).any(-1).any(0).nonzero()[0])
                raise NonFiniteLossError(
                    f"HOPE layer {self.name}: non-finite {what} in the inner loop at token step {step} "
                    f"of {tensor.shape[1]} (the fast memories diverged; try a smaller eta_max)"
                )
