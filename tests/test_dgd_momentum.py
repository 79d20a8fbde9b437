"""clbench.kernels.dgd_momentum: the Titans-form closed form against its token loop.

All checks in fp64 on CPU at tiny shapes (nested_learning.md §9.4), head-major as HOPE's
memories call the op: q, k [B, G, C, K]; w [B, G, C, V]; eta, alpha, mu [B, G, C];
s0, m0 [B, G, K, V].
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbench.kernels.dgd_momentum import (
    dgd_momentum_naive,
    dgd_momentum_one_chunk,
    dgd_momentum_step,
    inner_momentum_naive,
)
from clbench.kernels.dgd_rule import dgd_rule_one_chunk

F64 = torch.float64
NAMES = ("q", "k", "w", "eta", "alpha", "mu", "s0", "m0")


def make_inputs(B=2, G=3, T=7, K=4, V=3, seed=0, mu_low=0.05):
    """Random gates: eta in [0, 0.5), alpha in (0.5, 1], mu in (mu_low, 1); unit keys and a
    nonzero starting momentum, so every term of the closed form is exercised."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=F64)

    return {
        "q": randn(B, G, T, K),
        "k": F.normalize(randn(B, G, T, K), dim=-1),
        "w": randn(B, G, T, V),
        "eta": 0.5 * rand(B, G, T),
        "alpha": 1 - 0.5 * rand(B, G, T),
        "mu": mu_low + (1 - mu_low) * rand(B, G, T),
        "s0": randn(B, G, K, V),
        "m0": 0.5 * randn(B, G, K, V),
    }


def chained(x: dict, chunk: int, *, dgd: bool):
    """The closed form chunk after chunk (each starting from the last one's S and m)."""
    s, m, outs = x["s0"], x["m0"], []
    for start in range(0, x["q"].shape[2], chunk):
        piece = {n: x[n][:, :, start:start + chunk] for n in ("q", "k", "w", "eta", "alpha", "mu")}
        o, s, m = dgd_momentum_one_chunk(**piece, s0=s, m0=m, dgd=dgd)
        outs.append(o)
    return torch.cat(outs, dim=2), s, m


def assert_close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize("dgd", [True, False])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16])  # 7 tokens: 3 leaves a short last chunk
def test_chunk_equals_token_loop(chunk, dgd):
    x = make_inputs(seed=chunk)
    o_ref, s_ref, m_ref = dgd_momentum_naive(**x, dgd=dgd)
    o, s, m = chained(x, chunk, dgd=dgd)
    assert_close(o, o_ref)
    assert_close(s, s_ref)
    assert_close(m, m_ref)


def test_strong_decay_and_tiny_momentum_stay_finite():
    # Chunk-local products underflow; the log-space ratios must neither overflow nor NaN.
    x = make_inputs(T=12, seed=11)
    x["alpha"] = torch.full_like(x["alpha"], 1e-30)
    x["mu"] = torch.full_like(x["mu"], 1e-30)
    o_ref, s_ref, m_ref = dgd_momentum_naive(**x)
    o, s, m = dgd_momentum_one_chunk(**x)
    assert all(torch.isfinite(t).all() for t in (o, s, m))
    assert_close(o, o_ref)
    assert_close(s, s_ref)
    assert_close(m, m_ref)


@pytest.mark.parametrize("dgd", [True, False])
def test_gradients_of_chunk_and_token_loop_agree(dgd):
    x = make_inputs(B=1, G=2, T=6, seed=3)
    g = torch.Generator().manual_seed(4)
    weights = None

    def grads(fn):
        nonlocal weights
        leaves = {n: t.clone().requires_grad_(True) for n, t in x.items()}
        outs = fn(leaves)
        if weights is None:  # one fixed random projection of (o, S, m) for both
            weights = [torch.randn(o.shape, generator=g, dtype=F64) for o in outs]
        loss = sum((o * r).sum() for o, r in zip(outs, weights, strict=True))
        return torch.autograd.grad(loss, [leaves[n] for n in NAMES])

    ref = grads(lambda leaves: dgd_momentum_naive(**leaves, dgd=dgd))
    got = grads(lambda leaves: chained(leaves, 4, dgd=dgd))
    for name, a, b in zip(NAMES, got, ref, strict=True):
        assert b.abs().max() > 0, name  # every input reaches the loss
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_gradcheck_of_the_closed_form():
    x = make_inputs(B=1, G=1, T=4, K=2, V=2, seed=5, mu_low=0.3)
    # Keep alpha off 1: gradcheck's +-1e-6 steps must stay inside (0, 1].
    x["alpha"] = 0.6 + 0.3 * (x["alpha"] - 0.5) / 0.5
    leaves = tuple(x[n].requires_grad_(True) for n in NAMES)
    assert torch.autograd.gradcheck(lambda *a: dgd_momentum_one_chunk(*a), leaves)


@pytest.mark.parametrize("dgd", [True, False])
def test_vanishing_momentum_gate_is_the_dgd_rule(dgd):
    """mu -> 0: m_t is this token's step alone, so S_t = alpha S + k u^T, the gated DGD rule.
    The token loop takes mu = 0 itself; the closed form needs mu > 0 (its log), so 1e-30."""
    x = make_inputs(T=6, seed=6)
    o_rule, s_rule = dgd_rule_one_chunk(x["q"], x["k"], x["w"], x["eta"], x["alpha"], x["s0"], dgd=dgd)
    zero = {**x, "mu": torch.zeros_like(x["mu"])}
    o, s, _ = dgd_momentum_naive(**zero, dgd=dgd)
    assert_close(o, o_rule)
    assert_close(s, s_rule)
    tiny = {**x, "mu": torch.full_like(x["mu"], 1e-30)}  # m0 then fades by 1e-30 too
    o, s, _ = dgd_momentum_one_chunk(**tiny, dgd=dgd)
    assert_close(o, o_rule)
    assert_close(s, s_rule)


@pytest.mark.parametrize("dgd", [True, False])
def test_inner_form_without_momentum_is_the_dgd_rule(dgd):
    # mu = 0: m_t is the whole step of the rule, retention included, and S_t = S_{t-1} + m_t.
    x = make_inputs(T=5, seed=7)
    o_rule, s_rule = dgd_rule_one_chunk(x["q"], x["k"], x["w"], x["eta"], x["alpha"], x["s0"], dgd=dgd)
    o, s, _ = inner_momentum_naive(x["q"], x["k"], x["w"], x["eta"], x["alpha"], torch.zeros(3, dtype=F64),
                                   x["s0"], x["m0"], dgd=dgd)
    assert_close(o, o_rule)
    assert_close(s, s_rule)


@pytest.mark.parametrize("impl", ["auto", "chunk", "naive"])
def test_step_dispatch(impl):
    x = make_inputs(T=5, seed=8)
    got = dgd_momentum_step(*(x[n] for n in NAMES), impl=impl)
    ref = dgd_momentum_naive(**x)
    for a, b in zip(got, ref, strict=True):
        assert_close(a, b)


def test_bad_impl_is_rejected():
    x = make_inputs(T=3)
    with pytest.raises(ValueError, match=r"impl must be one of 'auto', 'chunk', 'naive'; got 'triton'"):
        dgd_momentum_step(*(x[n] for n in NAMES), impl="triton")
