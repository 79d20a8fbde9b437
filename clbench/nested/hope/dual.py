r"""Token-parallel ("dual") form of a HOPE layer's memory banks: the CPU fast path of one pass.

Every write of the update rule is rank one along a key and the gates are scalars per head and
token, so after token r each state matrix of a bank is its start value plus a sum of rank-one
terms (S = Mᵀ as in memory.py; Titans-form momentum as in kernels/dgd_momentum, or none):

    S_r = Γ_r S̄ + Σ_{i<=r} G_{r,i} k_i u_iᵀ,      Γ_r = Π_{j<=r} alpha_j,
    G_{r,i} = Σ_{j=i..r} (Γ_r/Γ_j)(P_j/P_i)  with momentum (P_j = Π_{l<=j} mu_l),  Γ_r/Γ_i without

for a start momentum of zero (the layer's start states). S̄ is a parameter, the same for every
example, so no per-example state is ever built: a read of S_r is one product with the shared S̄
over the whole batch plus an attention-like product with the history (earlier keys k_i and
steps u_i, at most T tokens). The chunked closed forms (kernels/dgd_momentum, dgd_rule,
mlp_memory) rewrite a [B, G, K, V] state every chunk in many small batched matmuls instead.

Semantics are memory.py's, operation for operation in exact arithmetic: per chunk [c, e) the
inner gradient at the chunk-start state S_{c-1} (targets M(v) read there too), the DGD term at
S_{t-1} through a unit-lower-triangular solve inside the chunk, reads before writes, W1's step.
tests/test_hope_dual.py compares this path with the chunked one (values and gradients), and
tests/test_hope_titans.py the layer with its token loop.

Layout (all 3-D, so every product is one bmm): per head [H*B, n, .] (head-major, so a view
[H, B*n, .] multiplies a head's shared start matrix); per memory [M*H*B, n, .] (memory.py's
memory-major group order). The M memories of the projection bank share each head's keys, gates
and the DGD solve, so their key-side matrices (S, or W2's S2) form one memory per head with M
times wider values: [H*B, n, M*V]. Row r of a coefficient matrix is the state after token r
(r = -1: S̄).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.nested.hope.dual_gates import Gates
from clbench.nested.hope.memory import silu_grad, w1_step


def shared_start(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A bank's start matrices [G, K, V] when every example starts from the same ones with zero
    momentum (the layer's start states), else None: the dual form needs both."""
    out = {}
    for name, value in state.items():
        if name.startswith("m"):
            if bool(value.any()):
                return None
        elif value.shape[0] == 1 or value.stride(0) == 0:
            out[name] = value[0]
        else:
            return None
    return out


def _by_group(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x [G*B, n, K] (group-major) times s [G, K, V] shared by the batch: one product per group."""
    g = s.shape[0]
    return torch.bmm(x.reshape(g, -1, x.shape[-1]), s).view(x.shape[0], x.shape[1], -1)


def _blocks(x: torch.Tensor, m: int) -> torch.Tensor:
    """[HB, n*M, M*V] (rows (t, m)) -> [M, HB, n, V]: each memory's rows times its column block."""
    hb, nm, mv = x.shape
    return x.as_strided((m, hb, nm // m, mv // m), (mv + mv // m, nm * mv, m * mv, 1), x.storage_offset())


class DualBank:
    """One bank (M memories x H heads, start matrices [M*H, K, V]) over one sequence.

    Coefficients come in broadcast shapes: one row (a chunk's snapshot, row c - 1) as g [HB, 1, c]
    and gamma [HB, 1, 1]; the rows of a chunk's tokens as g [HB, n, e] and gamma [HB, n, 1]."""

    def __init__(self, bank, start: dict[str, torch.Tensor], heads: int, batch: int, gates: Gates):
        self.rule, self.gates, self.h, self.b = bank.rule, gates, heads, batch
        self.linear = "s" in start
        key = start["s" if self.linear else "s2"]
        mh, self.d, self.v = key.shape
        self.m = mh // heads
        self.key_start = key  # per memory, for reads of per-memory inputs
        self.key_wide = key.view(self.m, heads, self.d, self.v).permute(1, 2, 0, 3).reshape(heads, self.d, -1)
        self.out_start = None if self.linear else start["s1"]  # [M*H, h, d]
        self.keys = self.steps = self.hidden = self.out_steps = None  # histories: k, U, a, U1

    def _per_memory(self, x: torch.Tensor) -> torch.Tensor:
        """[HB, n, M*V] -> [M*HB, n, V]."""
        if self.m == 1:
            return x
        hb, n, _ = x.shape
        return x.view(hb, n, self.m, -1).permute(2, 0, 1, 3).reshape(self.m * hb, n, -1)

    def _wide(self, x: torch.Tensor) -> torch.Tensor:
        """[M*HB, n, V] -> [HB, n, M*V]."""
        if self.m == 1:
            return x
        _, n, v = x.shape
        return x.view(self.m, -1, n, v).permute(1, 2, 0, 3).reshape(-1, n, self.m * v)

    def _repeat(self, x: torch.Tensor) -> torch.Tensor:
        """A per-head tensor [HB, ...] for every memory: [M*HB, ...]."""
        return x if self.m == 1 else x.repeat(self.m, *([1] * (x.dim() - 1)))

    # ------------------------------------------------------------------ reads at chunk starts
    def prepare(self, rows: torch.Tensor, per_memory: torch.Tensor, step: int) -> None:
        """The inputs each memory reads: rows [HB, T, M, d], per_memory [M*HB, T, d] (the same
        values in two layouts), cut into chunks of `step` tokens once (one autograd node each,
        where slicing every chunk would zero-fill a whole-sequence gradient per chunk). Their S̄
        part is one product for the whole sequence."""
        self.inputs, self.inputs_m = rows.split(step, dim=1), per_memory.split(step, dim=1)
        self.from_start = _by_group(per_memory, self.key_start).split(step, dim=1)  # [M*HB, n, V] each

    def read(self, chunk: int, g_snap: torch.Tensor, gamma_snap: torch.Tensor) -> torch.Tensor:
        """M_m(z_m) at the start of chunk number `chunk` for every memory: [M, HB, n, d]."""
        rows = self.inputs[chunk]
        (hb, n), m = rows.shape[:2], self.m
        pre = self.from_start[chunk].view(m, hb, n, self.v)
        if self.keys is not None:
            scores = torch.bmm(rows.reshape(hb, -1, self.d), self.keys.transpose(1, 2))
            pre = gamma_snap * pre + _blocks(torch.bmm(scores * g_snap, self.steps), m)
        if self.linear:
            return pre
        g_m, gamma_m = self._repeat(g_snap), self._repeat(gamma_snap)
        out = self.inputs_m[chunk] + self._out_read(F.silu(pre.view(-1, n, self.v)), g_m, gamma_m)
        return out.view(m, hb, n, -1)

    def _out_read(self, a, g, gamma, hidden=None, steps=None) -> torch.Tensor:
        """a S1 for rows a [M*HB, n, h], coefficients g, gamma per memory ([M*HB, ...]) over the
        history `hidden`, `steps` (default: S1's so far)."""
        hidden = self.hidden if hidden is None else hidden
        out = gamma * _by_group(a, self.out_start)
        if hidden is None:
            return out
        scores = torch.bmm(a, hidden.transpose(1, 2)) * g
        return torch.baddbmm(out, scores, self.out_steps if steps is None else steps)

    # ------------------------------------------------------------------ one chunk of writes
    def _solve(self, k, eta, g_in, rhs, q=None):
        """The chunk's steps U from rhs = diag(eta)(...): (I + L) U = rhs with L_{t,i} =
        eta_t G_{t-1,i} k_tᵀ k_i (i < t), the DGD term inside the chunk; also q kᵀ for reads.
        eta [HB, n, 1]."""
        if not self.rule.dgd:
            return rhs, None if q is None else torch.bmm(q, k.transpose(1, 2))
        if q is None:
            dots, q_dots = torch.bmm(k, k.transpose(1, 2)), None
        else:
            dots, q_dots = torch.bmm(torch.cat([k, q], dim=1), k.transpose(1, 2)).split(k.shape[1], dim=1)
        u = torch.linalg.solve_triangular(eta * g_in * dots, rhs, upper=False, unitriangular=True)
        return u, q_dots

    def _append(self, **pieces) -> None:
        for name, x in pieces.items():
            old = getattr(self, name)
            setattr(self, name, x if old is None else torch.cat([old, x], dim=1))

    def write_linear(self, k, v, eta, g_snap, gamma_snap, g_rows, gamma_rows) -> None:
        """Learn chunk [c, e) (no reads; the projection bank): k, v [HB, n, d], eta [HB, n, 1];
        g_rows [HB, n, e], gamma_rows [HB, n, 1]: rows c-1 .. e-2, each token's S_{t-1}."""
        n, c, dgd = k.shape[1], 0 if self.keys is None else self.keys.shape[1], self.rule.dgd
        diff = v - k  # M(v) - M(k) = (v - k) S_{c-1}: the negative inner gradient
        # rhs / eta = (v - k) S_{c-1} - k S_{t-1} without the chunk's own steps; S̄ parts first.
        base = gamma_snap * diff - gamma_rows * k if dgd else gamma_snap * diff
        rhs = _by_group(base, self.key_wide)
        g_hist, g_in = g_rows.split([c, n], dim=2)
        if c and dgd:
            s_diff, s_k = torch.bmm(torch.cat([diff, k], dim=1), self.keys.transpose(1, 2)).split(n, dim=1)
            rhs = torch.baddbmm(rhs, s_diff * g_snap - s_k * g_hist, self.steps)
        elif c:
            rhs = torch.baddbmm(rhs, torch.bmm(diff, self.keys.transpose(1, 2)) * g_snap, self.steps)
        u, _ = self._solve(k, eta, g_in, eta * rhs)
        self._append(keys=k, steps=u)

    def write_mlp(self, k, v, eta, g_snap, gamma_snap, g_rows, gamma_rows, q=None):
        """write_linear for MLP memories; with queries q [HB, n, d] (M = 1) also returns the
        reads M_{t-1}(q_t) [HB, n, d]."""
        n, c, dgd = k.shape[1], 0 if self.keys is None else self.keys.shape[1], self.rule.dgd
        # W2's pre-activations of k and v at the chunk start (M(k) for the error, M(v) as targets),
        # of k at S2_{t-1} (the DGD term) and of q at S2_{t-1} (reads), in one product with S̄2
        # and one with the history. Γ scales the rows (d wide) rather than the products (M*h wide).
        scaled = [gamma_snap * k, gamma_snap * v] + ([gamma_rows * k] if dgd else [])
        scaled += [] if q is None else [gamma_rows * q]
        pre = _by_group(torch.cat(scaled, dim=1), self.key_wide)  # [HB, 2n (+n) (+n), M*h]
        g_hist, g_in = g_rows.split([c, n], dim=2)
        if c:
            s_k, s_v, *s_q = torch.bmm(torch.cat([k, v, *([] if q is None else [q])], dim=1),
                                       self.keys.transpose(1, 2)).split(n, dim=1)
            coef = [torch.cat([s_k, s_v], dim=1) * g_snap] + ([s_k * g_hist] if dgd else [])
            coef += [s * g_hist for s in s_q]
            pre = torch.baddbmm(pre, torch.cat(coef, dim=1), self.steps)
        z_both, *rest = pre.split([2 * n] + [n] * (pre.shape[1] // n - 2), dim=1)
        dgd_start = rest.pop(0) if dgd else None
        q_pre = rest.pop(0) if q is not None else None
        z_both = self._per_memory(z_both)  # [M*HB, 2n, h]
        (z, _), (a, a_v) = z_both.split(n, dim=1), F.silu(z_both).split(n, dim=1)
        g_m, gamma_m = self._repeat(g_snap), self._repeat(gamma_snap)
        # M(k) - M(v) = k - v + (a_k - a_v) S1_{c-1}: the read is linear in the hidden rows, and
        # the residual part k - v is the same for every memory.
        err = self._out_read(a - a_v, g_m, gamma_m).view(self.m, -1, n, self.d) + (k - v)
        err = err.view(-1, n, self.d)
        # Backprop of 1/2 ||M(k) - M(v)||^2 to W2 at the chunk-start weights: (err S1ᵀ) silu'(z).
        back = gamma_m * _by_group(err, self.out_start.transpose(1, 2))
        if c:
            back = torch.baddbmm(back, torch.bmm(err, self.out_steps.transpose(1, 2)) * g_m, self.hidden)
        w2 = self._wide(back * silu_grad(z))
        rhs = eta * (-w2 - dgd_start if dgd else -w2)
        u2, q_dots = self._solve(k, eta, g_in, rhs, q)
        u1 = -w1_step(self._repeat(eta[:, :, 0]), a, self.rule.w1_step)[:, :, None] * err
        self._append(keys=k, steps=u2, hidden=a, out_steps=u1)
        if q is None:
            return None
        z_q = torch.baddbmm(q_pre, q_dots * g_in, u2)
        return q + self._out_read(F.silu(z_q), g_rows, gamma_rows)

    # ------------------------------------------------------------------ the main memory's pass
    def main_reads(self, k, v, q, eta, g, gamma, chunk: int) -> torch.Tensor:
        """Reads M_{t-1}(q_t) [HB, T, d] of the main memory (M = 1) over the whole sequence,
        learning from k, v [HB, T, d], eta [HB, T, 1]; g [HB, T+1, T], gamma [HB, T+1, 1]: every
        row (row r at index r + 1)."""
        t = k.shape[1]
        if not self.linear:
            reads = []
            pieces = zip(*(x.split(chunk, dim=1) for x in (k, v, eta, q)), strict=True)
            for c, (k_c, v_c, eta_c, q_c) in zip(range(0, t, chunk), pieces, strict=True):
                e = c + k_c.shape[1]
                reads.append(self.write_mlp(k_c, v_c, eta_c, g[:, c:c + 1, :c], gamma[:, c:c + 1],
                                            g[:, c:e, :e], gamma[:, c:e], q_c))
            return torch.cat(reads, dim=1)
        # Linear: every chunk's inputs are known, and u_t is linear in all earlier steps, so the
        # whole sequence is one triangular solve: u_t + Σ_{i<t} eta_t (G_{t-1,i} k_t·k_i
        # - G_{c-1,i} (v_t - k_t)·k_i) u_i = eta_t (Γ_{c-1} (v_t - k_t) - Γ_{t-1} k_t) S̄,
        # where c is t's chunk start (G_{c-1,i} = 0 for i >= c).
        snap = torch.arange(t, device=k.device) // chunk * chunk  # row c - 1 sits at index c
        g_prev, g_snap = g[:, :t], g[:, snap]
        gamma_prev, gamma_snap = gamma[:, :t], gamma[:, snap]
        diff = v - k
        base = gamma_snap * diff - gamma_prev * k if self.rule.dgd else gamma_snap * diff
        rhs, q_start = _by_group(torch.cat([base, gamma_prev * q], dim=1), self.key_wide).split(t, dim=1)
        dk, kk, qk = torch.bmm(torch.cat([diff, k, q], dim=1), k.transpose(1, 2)).split(t, dim=1)
        lower = g_prev * kk - g_snap * dk if self.rule.dgd else -g_snap * dk
        u = torch.linalg.solve_triangular(eta * lower, eta * rhs, upper=False, unitriangular=True)
        self.keys, self.steps = k, u
        return torch.baddbmm(q_start, qk * g_prev, u)

    # ------------------------------------------------------------------ end of the sequence
    def final_state(self, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state after the last token in memory.py's layout: [B, M*H, K, V] per matrix."""
        t, (h, b, m) = self.keys.shape[1], (self.h, self.b, self.m)
        g_last, gamma_last = self.gates.rows(t - 1, t, t)
        weights = {"s": g_last[:, 0]}
        if self.gates.lp is not None:
            weights["m"] = self.gates.momentum_row(t - 1, t)
        # [HB] -> [B, M*H, 1, 1] for every memory
        gamma = gamma_last.view(h, b).t()[:, None].expand(b, m, h).reshape(b, m * h, 1, 1)  # [HB, 1, 1] -> [B, M*H, 1, 1]
        state = {}
        for kind, coef in weights.items():
            sums = torch.bmm((self.keys * coef[:, :, None]).transpose(1, 2), self.steps)  # [HB, d, M*V]
            sums = sums.view(h, b, self.d, m, self.v).permute(1, 3, 0, 2, 4).reshape(b, m * h, self.d, self.v)
            names = ("s", "m") if self.linear else ("s2", "m2")
            state[names[kind == "m"]] = gamma * start[names[0]] + sums if kind == "s" else sums
            if not self.linear:
                sums = torch.bmm((self.hidden * self._repeat(coef)[:, :, None]).transpose(1, 2), self.out_steps)
                sums = sums.view(m, h, b, self.v, self.d).permute(2, 0, 1, 3, 4).reshape(b, m * h, self.v, self.d)
                state["s1" if kind == "s" else "m1"] = gamma * start["s1"] + sums if kind == "s" else sums
        return state
