"""MultiRateOptimizer against an independently written multi-rate SGD loop.

tests/test_cms.py checks the schedule (which level fires when) and the reductions with
constant gradients, where "mean of the chunk" cannot be told from "the last gradient". Here
the gradients depend on the parameters (a tanh net, cross-entropy, a new minibatch every
step), and the fast level moves the parameters that the slow levels' gradients are taken
at, so every gradient of a chunk is different. The reference below is written from the
documented semantics (clbench/nested/multirate.py, docs/cms.md D6/D8) with plain tensors and
torch.autograd.grad; it imports nothing from clbench.nested:

- every step, each parameter's gradient is taken at the current parameters;
- a level adds its gradients to its accumulator; once `period` of them are collected it
  steps with lr * lr_mult * (their sum, or their mean = sum / count) and clears it;
- flush() applies every partial chunk (mean = sum / the number collected); the next chunk
  starts counting from there.

Each implementation of the wrapper is compared: the per-level path (`kernel=False`) and
kernel K3's two CPU implementations ("chunk" = the foreach reference, "naive").
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbench.nested.multirate import Level, MultiRateOptimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LR = 0.2
# (period, lr multiplier) of the three levels: one per Linear layer of the net. Distinct
# multipliers also check that each level's inner optimizer gets its own level's multiplier.
LEVELS = ((1, 1.0), (3, 0.5), (5, 2.0))
PATHS = {
    "per-level": {"kernel": False},
    "k3-chunk": {"kernel_impl": "chunk"},
    "k3-naive": {"kernel_impl": "naive"},
}
# float64 throughout: the two sides differ only in rounding (x * (1/n) against x / n), far
# below what any wrong gradient, wrong count or wrong scale would give (about LR * |g|).
TOL = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture(autouse=True)
def _no_kernel_override(monkeypatch):
    monkeypatch.delenv("CLBENCH_KERNELS", raising=False)  # the impl asked for is the impl run


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()


def make_wrapper(net: nn.Sequential, reduction: str, path: str, spec=LEVELS) -> MultiRateOptimizer:
    linears = [m for m in net if isinstance(m, nn.Linear)]
    levels = [
        Level(f"l{i}", list(m.parameters()), period, mult)
        for i, (m, (period, mult)) in enumerate(zip(linears, spec, strict=True))
    ]
    return MultiRateOptimizer(
        levels,
        lambda i, ps, mult: torch.optim.SGD(ps, lr=LR * mult),
        reduction,
        **PATHS[path],
    )


def batches(n: int, seed: int = 1, fixed: bool = False):
    """n minibatches (8 samples, 3 classes), seeded; `fixed`: the same one n times."""
    g = torch.Generator().manual_seed(seed)
    for t in range(n):
        if t == 0 or not fixed:
            x = torch.randn(8, 4, generator=g, dtype=torch.float64)
            y = torch.randint(0, 3, (8,), generator=g)
        yield x, y


# --------------------------------------------------------------------------- the reference
def reference_loss(params: list[torch.Tensor], x, y) -> torch.Tensor:
    """The net's forward written out: Linear, tanh, Linear, tanh, Linear, cross-entropy."""
    w0, b0, w1, b1, w2, b2 = params
    h = torch.tanh(x @ w0.T + b0)
    h = torch.tanh(h @ w1.T + b1)
    return F.cross_entropy(h @ w2.T + b2, y)


class ReferenceMultiRateSGD:
    """Multi-rate SGD on plain tensors; level i owns parameters 2i, 2i+1 (weight, bias)."""

    def __init__(self, params, reduction: str):
        self.params = [p.detach().clone() for p in params]
        self.reduction = reduction
        self.acc = [torch.zeros_like(p) for p in self.params]
        self.count = [0] * len(LEVELS)  # gradients collected since the level's last update
        self.updates = [0] * len(LEVELS)

    def gradients(self, x, y) -> list[torch.Tensor]:
        live = [p.clone().requires_grad_(True) for p in self.params]
        return list(torch.autograd.grad(reference_loss(live, x, y), live))

    def step(self, x, y) -> list[int]:
        grads = self.gradients(x, y)  # all at the parameters before this step
        fired = []
        for i, (period, _) in enumerate(LEVELS):
            for j in (2 * i, 2 * i + 1):
                self.acc[j] += grads[j]
            self.count[i] += 1
            if self.count[i] == period:
                self._update(i)
                fired.append(i)
        return fired

    def flush(self) -> list[int]:
        fired = [i for i, n in enumerate(self.count) if n > 0]
        for i in fired:
            self._update(i)
        return fired

    def _update(self, i: int) -> None:
        lr = LR * LEVELS[i][1]
        for j in (2 * i, 2 * i + 1):
            g = self.acc[j] if self.reduction == "sum" else self.acc[j] / self.count[i]
            self.params[j] = self.params[j] - lr * g
            self.acc[j] = torch.zeros_like(self.acc[j])
        self.count[i] = 0
        self.updates[i] += 1


def wrapper_step(net, opt, x, y) -> None:
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()


def assert_matches(net, opt, ref, where: str) -> None:
    for (name, p), r in zip(net.named_parameters(), ref.params, strict=True):
        torch.testing.assert_close(p.detach(), r, **TOL, msg=lambda m, n=name: f"{where}, {n}: {m}")
    assert opt.updates == ref.updates, where
    assert [opt.pending(i) for i in range(len(LEVELS))] == ref.count, where


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_every_step_matches_an_independent_multi_rate_sgd_loop(reduction, path):
    net = make_net()
    opt = make_wrapper(net, reduction, path)
    ref = ReferenceMultiRateSGD(net.parameters(), reduction)
    assert_matches(net, opt, ref, "at the start")
    data = batches(30)
    # "experience 1": 23 steps leave partial chunks of 2 (period 3) and 3 (period 5) gradients,
    # so the flush's mean divides by 2 and 3, neither the period nor 1.
    def steps(numbers):
        for t in numbers:
            x, y = next(data)
            fired = ref.step(x, y)
            wrapper_step(net, opt, x, y)
            assert opt.last_fired == fired, t
            assert_matches(net, opt, ref, f"after step {t}")

    steps(range(1, 24))
    assert ref.count == [0, 2, 3]
    assert opt.flush() == ref.flush() == [1, 2]
    assert_matches(net, opt, ref, "after the flush")
    # "experience 2": chunks count from the flush, not from multiples of the step number
    steps(range(24, 31))
    assert ref.updates == [30, 7 + 1 + 2, 4 + 1 + 1]  # the loop really exercised every level
    if path != "per-level":  # the implementation that was asked for is the one that ran
        assert all(opt.kernel_ran(i) == {PATHS[path]["kernel_impl"]} for i in (1, 2))
    else:
        assert all(opt.kernel_level(i) is None for i in range(len(LEVELS)))


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_a_slow_update_holds_exactly_the_gradients_of_its_own_chunk(reduction, path):
    # One fixed minibatch: the gradients of steps 1-3 differ only because the period-1
    # level moved the parameters they are taken at (the slow levels have not moved yet);
    # its lr x5 moves it far enough for them to differ by 2-30% (measured).
    spec = ((1, 5.0), *LEVELS[1:])
    net = make_net()
    opt = make_wrapper(net, reduction, path, spec)
    slow = net[2]  # level 1: period 3, lr multiplier 0.5
    lr = LR * spec[1][1]
    start = [p.detach().clone() for p in slow.parameters()]
    grads, after = [], []  # per step: level 1's gradients (at that step's parameters), params
    for x, y in batches(6, fixed=True):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        grads.append([p.grad.clone() for p in slow.parameters()])
        opt.step()
        after.append([p.detach().clone() for p in slow.parameters()])
    for j in range(2):
        g1, g2, g3 = (grads[s][j] for s in range(3))
        # the premise: the fast level moved, so the three gradients are not the same
        assert (g1 - g3).norm() > 1e-2 * g3.norm() and (g2 - g3).norm() > 1e-2 * g3.norm()
        assert torch.equal(after[0][j], start[j]) and torch.equal(after[1][j], start[j])
        change = after[2][j] - start[j]
        chunk = g1 + g2 + g3 if reduction == "sum" else (g1 + g2 + g3) / 3
        torch.testing.assert_close(change, -lr * chunk, **TOL)
        # ... which an update from the last or the first gradient alone, or the other
        # reduction, would miss by far more than the tolerance
        scale = (g1 + g2 + g3).norm() / 3
        other = (g1 + g2 + g3) / 3 if reduction == "sum" else g1 + g2 + g3
        for wrong in (g3, g1, other):
            assert (change + lr * wrong).norm() > 1e-3 * lr * scale
        # the second chunk holds steps 4-6 only: the accumulator was cleared at step 3
        g4, g5, g6 = (grads[s][j] for s in range(3, 6))
        chunk2 = g4 + g5 + g6 if reduction == "sum" else (g4 + g5 + g6) / 3
        assert torch.equal(after[3][j], after[2][j]) and torch.equal(after[4][j], after[2][j])
        torch.testing.assert_close(after[5][j] - after[2][j], -lr * chunk2, **TOL)
