"""Associative memories of the self-modifying Titans layer (nested_learning.md §3, §6.2-6.3).

A memory bank holds G = (memories x heads) independent fast memories, each mapping a
d-vector to a d-vector. Contract (head-major: tokens [B, G, n, d], rates [B, G, n]; the
layout makes every read a plain batched matmul):

- `init_state(batch)`   -> state: the meta-learned initial state (a parameter) expanded
                           to the batch, so outer training learns it (§6.2 "initial states
                           are meta-learned");
- `read(state, z)`      -> M(z) with the state held fixed, z: [B, G, n, d] (chunk-start reads:
                           generating k, v, q, eta, alpha and the self-generated values);
- `self_update(state, keys, values, eta, alpha, queries)`: the same with the memory's own
                           reading of `values` as targets (v_hat = M(v), Eq. 84), fused
                           with the gradient pass where the memory allows;
- `chunk_update(state, keys, targets, eta, alpha, queries)` -> (state after the chunk,
                           token-level reads M_{t-1}(q_t)): one chunk of the inner loop.

Inner objective: 1/2 ||M(k_t) - v_hat_t||^2, its gradient taken at the chunk-start state (the
floor index of §6.3, so the whole chunk's gradients are matmuls). Update rule, per token
(Eq. 88, S = M^T layout): S_t = alpha_t S_{t-1} - eta_t k_t k_t^T S_{t-1} [DGD term] - eta_t grad_t.
Kernels (one dispatch each; Triton on CUDA, the PyTorch closed forms on CPU): a linear
memory's chunk is one `clbench.kernels.dgd_rule` step (K1), an MLP memory's chunk one
`clbench.kernels.mlp_memory` call (K2: forward at the chunk-start weights, hand backprop,
both writes). With momentum (the paper's full model, Table 6) each state matrix's chunk is
one `clbench.kernels.dgd_momentum` step: the Titans form (forget gate outside the momentum,
a data-dependent momentum gate mu_t from the layer) has a closed form like K1's; the older
"inner" form (retention inside the momentum, one static gate per memory) runs its token loop.

Linear memory: M(z) = M z, state S [K, V] = M^T.
MLP memory (Eq. 89/91): M(z) = z + W1 silu(W2 z), state (S2 = W2^T [d, h], S1 = W1^T [h, d]).
Where the DGD factor acts in an MLP memory is not in the paper [U]: like kmc we put it on the
input-side matrix W2 (keys k) and give W1 (keys silu(W2 k)) plain retention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clbench.kernels.dgd_momentum import dgd_momentum_step, inner_momentum_naive
from clbench.kernels.dgd_rule import dgd_rule_step
from clbench.kernels.mlp_memory import mlp_memory

# TitansOptions.kernels -> the `impl` of the kernel dispatches (dgd_rule, mlp_memory)
KERNEL_CHOICES = {"auto": "auto", "reference": "chunk", "triton": "triton"}
MOMENTUM_FORMS = ("titans", "inner")
W1_STEPS = ("normalized", "plain")


@dataclass(frozen=True)
class InnerRule:
    """How every memory of a layer learns in context (Table 6 ablations switch these)."""

    dgd: bool = True  # the -eta k k^T S term (off: plain GD with retention, "w/o DGD")
    momentum: bool = True  # momentum over the update (the paper's Table 6 model has it)
    momentum_form: str = "titans"  # titans: gate mu_t per token, retention outside | inner (see module doc)
    w1_step: str = "normalized"  # MLP memories: W1's step eta / max(1, ||a||^2) | plain eta (w1_step())
    stop_grad_writes: bool = False  # D10: detach what is written (reads stay differentiable)
    kernels: str = "auto"  # not semantics, only where it runs: see KERNEL_CHOICES


def w1_step(eta: torch.Tensor, hidden: torch.Tensor, rule: str = "normalized") -> torch.Tensor:
    """W1's step size: eta / max(1, ||silu(W2 k)||^2), a normalised-LMS step ("plain": eta).

    W1's keys are hidden activations, not unit vectors: one plain step moves that token's
    output by eta ||a||^2 times its error, which diverges once ||a||^2 > 2 / eta (the outer
    loop can grow W2 that far). Normalising keeps every inner step contractive; it changes
    nothing while ||a|| <= 1. Our choice [U]: the paper leaves the MLP memory's steps open, so
    the literal form ("plain": the same eta as W2) is the option `model.w1_step=plain`.
    """
    if rule == "plain":
        return eta
    return eta / hidden.pow(2).sum(-1).clamp_min(1.0)


def silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


class MemoryBank(nn.Module):
    """Shared plumbing: per-group momentum decay and the write step through the rule."""

    def __init__(self, groups: int, dim: int, rule: InnerRule):
        super().__init__()
        self.groups, self.dim, self.rule = groups, dim, rule
        # The inner form's gate: mu = sigmoid(logit), one static (outer-level) value per memory.
        # The Titans form's gate mu_t is data-dependent and comes from the layer with eta, alpha.
        inner = rule.momentum and rule.momentum_form == "inner"
        self.momentum_logit = nn.Parameter(torch.zeros(groups)) if inner else None

    def self_update(self, state, keys, values, eta, alpha, queries, mu=None):
        """chunk_update with self-generated targets M(values) read at the chunk-start state."""
        return self.chunk_update(state, keys, self.read(state, values), eta, alpha, queries, mu)

    def _write(self, q, k, w, eta, alpha, mu, s, m, *, dgd: bool):
        """Advance one state matrix over a chunk; returns (reads S_{t-1}^T q_t, S, momentum).
        mu: [B, G, n], the Titans form's momentum gate per token (None otherwise)."""
        if self.rule.stop_grad_writes:
            k, w, eta, alpha = k.detach(), w.detach(), eta.detach(), alpha.detach()
            mu = mu.detach() if mu is not None else None
        if not self.rule.momentum:
            # One semantic chunk per call; the layer keeps eta, alpha in range and checks its
            # own results for NaN/inf, so the unchecked per-chunk body is enough. "auto"
            # runs the Triton kernel on CUDA and the chunked closed form on CPU.
            impl = KERNEL_CHOICES[self.rule.kernels]
            o, s = dgd_rule_step(q, k, w, eta, alpha, s, dgd=dgd, impl=impl)
            return o, s, m
        if self.rule.momentum_form == "inner":
            return inner_momentum_naive(q, k, w, eta, alpha, torch.sigmoid(self.momentum_logit), s, m, dgd=dgd)
        if mu is None:
            raise ValueError("Titans-form momentum needs the layer's gates mu [B, G, n] (momentum_gates)")
        return dgd_momentum_step(q, k, w, eta, alpha, mu, s, m, dgd=dgd)


class LinearMemory(MemoryBank):
    def __init__(self, groups: int, dim: int, rule: InnerRule):
        super().__init__(groups, dim, rule)
        self.s0 = nn.Parameter(torch.randn(groups, dim, dim) / math.sqrt(dim))

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        state = {"s": self.s0.expand(batch, -1, -1, -1)}
        if self.rule.momentum:
            state["m"] = torch.zeros_like(state["s"])
        return state

    def read(self, state, z: torch.Tensor) -> torch.Tensor:
        return z @ state["s"]

    def self_update(self, state, keys, values, eta, alpha, queries, mu=None):
        # M(v) - M(k) = (v - k) S: one matmul for the targets and the gradient together.
        return self._update(state, keys, (values - keys) @ state["s"], eta, alpha, queries, mu)

    def chunk_update(self, state, keys, targets, eta, alpha, queries, mu=None):
        return self._update(state, keys, targets - self.read(state, keys), eta, alpha, queries, mu)

    def _update(self, state, keys, w, eta, alpha, queries, mu):
        """w: the negative inner gradient direction per token, taken at the chunk start."""
        s = state["s"]
        o, s, m = self._write(queries, keys, w, eta, alpha, mu, s, state.get("m"), dgd=self.rule.dgd)
        return ({"s": s, "m": m} if m is not None else {"s": s}), o


class MLPMemory(MemoryBank):
    def __init__(self, groups: int, dim: int, hidden: int, rule: InnerRule):
        super().__init__(groups, dim, rule)
        # Residual MLP: the identity plus a small random branch, so a fresh memory passes
        # its input through (a sensible projection before any outer training).
        self.s2 = nn.Parameter(torch.randn(groups, dim, hidden) / math.sqrt(dim))
        self.s1 = nn.Parameter(torch.randn(groups, hidden, dim) * 0.1 / math.sqrt(hidden))

    def init_state(self, batch: int) -> dict[str, torch.Tensor]:
        state = {"s2": self.s2.expand(batch, -1, -1, -1), "s1": self.s1.expand(batch, -1, -1, -1)}
        if self.rule.momentum:
            state["m2"], state["m1"] = torch.zeros_like(state["s2"]), torch.zeros_like(state["s1"])
        return state

    def read(self, state, z: torch.Tensor) -> torch.Tensor:
        return z + F.silu(z @ state["s2"]) @ state["s1"]

    def self_update(self, state, keys, values, eta, alpha, queries, mu=None):
        if not self.rule.momentum and self.rule.w1_step == "normalized":
            return self._kernel_update(state, keys, values, eta, alpha, queries, self_modifying=True)
        # One forward pass over keys and values stacked: M(k) for the error, M(v) as targets.
        n, both = keys.shape[-2], torch.cat([keys, values], dim=-2)
        z = both @ state["s2"]
        a = F.silu(z)
        out = both + a @ state["s1"]
        err = out[..., :n, :] - out[..., n:, :]
        return self._write_both(state, keys, z[..., :n, :], a[..., :n, :], err, eta, alpha, queries, mu)

    def chunk_update(self, state, keys, targets, eta, alpha, queries, mu=None):
        if not self.rule.momentum and self.rule.w1_step == "normalized":
            return self._kernel_update(state, keys, targets, eta, alpha, queries, self_modifying=False)
        z = keys @ state["s2"]
        a = F.silu(z)
        return self._write_both(state, keys, z, a, keys + a @ state["s1"] - targets, eta, alpha, queries, mu)

    def _kernel_update(self, state, keys, values, eta, alpha, queries, *, self_modifying: bool):
        """Without momentum the whole chunk is one K2 op (`clbench.kernels.mlp_memory`): the
        forward at the chunk-start weights, the hand backprop and both DGD writes. "auto" runs
        the fused Triton kernel on CUDA and, on CPU, the chunked path, which is this class's
        former code operation for operation (results unchanged to the bit)."""
        o, s2, s1 = mlp_memory(
            queries, keys, values, eta, alpha, state["s2"], state["s1"],
            chunk_size=keys.shape[-2], dgd=self.rule.dgd, self_modifying=self_modifying,
            stop_grad_writes=self.rule.stop_grad_writes, impl=KERNEL_CHOICES[self.rule.kernels],
            check_values=False,  # the layer keeps eta, alpha in range and checks its results
        )  # fmt: skip
        return {"s2": s2, "s1": s1}, o

    def _write_both(self, state, keys, z, a, err, eta, alpha, queries, mu):
        """Both writes through `_write` (momentum, or the plain W1 step K2 does not fuse) from
        the chunk-start gradients. z, a: hidden pre-activations and activations of the keys;
        err = M(k) - v_hat."""
        s2, s1 = state["s2"], state["s1"]
        # Backprop of 1/2 ||k + W1 silu(W2 k) - v_hat||^2 at the chunk-start weights, by hand:
        # errors per token, so each token's gradient is rank one (E A^T for W1, D k^T for W2).
        hidden_err = (err @ s1.transpose(-1, -2)) * silu_grad(z)
        # W2 (input side) gets the DGD factor; its reads give the hidden pre-activations of
        # the queries, whose silu are the queries of W1 (plain retention, no DGD).
        step1 = w1_step(eta, a, self.rule.w1_step)
        z_q, s2, m2 = self._write(queries, keys, -hidden_err, eta, alpha, mu, s2, state.get("m2"), dgd=self.rule.dgd)
        h_q, s1, m1 = self._write(F.silu(z_q), a, -err, step1, alpha, mu, s1, state.get("m1"), dgd=False)
        new = {"s2": s2, "s1": s1} if m2 is None else {"s2": s2, "s1": s1, "m2": m2, "m1": m1}
        return new, queries + h_q


def make_memory(kind: str, groups: int, dim: int, hidden: int, rule: InnerRule) -> MemoryBank:
    if kind == "linear":
        return LinearMemory(groups, dim, rule)
    if kind == "mlp":
        return MLPMemory(groups, dim, hidden, rule)
    raise ValueError(f"unknown memory {kind!r}; valid: linear, mlp")
