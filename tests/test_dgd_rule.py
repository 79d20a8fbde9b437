"""clbench.kernels.dgd_rule: chunked closed form vs token loop vs independent references.

All checks run in fp64 on CPU at tiny shapes (nested_learning.md §9.4).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbench.kernels.dgd_rule import dgd_rule, dgd_rule_chunk, dgd_rule_naive
from clbench.kernels.dgd_rule.testing import random_inputs

F64 = torch.float64


def make_inputs(B=2, T=7, H=2, K=4, V=3, seed=0, alpha_low=0.5, dtype=F64):
    return random_inputs(B, T, H, K, V, seed=seed, alpha_low=alpha_low, dtype=dtype)


def assert_close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize("T", [7, 12])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
@pytest.mark.parametrize("read_before_write", [True, False])
@pytest.mark.parametrize("dgd", [True, False])
def test_chunk_equals_naive(T, chunk_size, read_before_write, dgd):
    x = make_inputs(T=T, seed=T * 100 + chunk_size)
    flags = {"dgd": dgd, "read_before_write": read_before_write}
    o_ref, s_ref = dgd_rule_naive(*x, **flags)
    o, s = dgd_rule_chunk(*x, chunk_size=chunk_size, **flags)
    assert o.shape == o_ref.shape == (2, T, 2, 3)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


def test_strong_decay_stays_finite():
    # Γ underflows to 0 inside a chunk; the log-space ratios must not overflow or NaN.
    x = make_inputs(T=16, seed=1)
    q, k, w, eta, _, s0 = x
    alpha = torch.full_like(eta, 1e-30)
    o_ref, s_ref = dgd_rule_naive(q, k, w, eta, alpha, s0)
    o, s = dgd_rule_chunk(q, k, w, eta, alpha, s0, chunk_size=16)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert_close(o, o_ref)
    assert_close(s, s_ref)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_identity_gates_keep_state(impl):
    q, k, w, eta, alpha, s0 = make_inputs(T=6)
    eta, alpha = torch.zeros_like(eta), torch.ones_like(alpha)
    o, s = dgd_rule(q, k, w, eta, alpha, s0, chunk_size=4, impl=impl)
    assert_close(s, s0, tol=0)
    assert_close(o, torch.einsum("bhkv,bthk->bthv", s0, q))


@pytest.mark.parametrize("read_before_write", [True, False])
def test_causality(read_before_write):
    x = make_inputs(T=11, seed=2)
    t0 = 5  # inside the second chunk of size 4
    o, _ = dgd_rule_chunk(*x, chunk_size=4, read_before_write=read_before_write)
    q, k, w, eta, alpha, s0 = (t.clone() for t in x)
    for t in (q, k, w):
        t[:, t0 + 1 :] += 1.0
    eta[:, t0 + 1 :] = 0.3
    alpha[:, t0 + 1 :] = 0.7
    o2, _ = dgd_rule_chunk(
        q, k, w, eta, alpha, s0, chunk_size=4, read_before_write=read_before_write
    )
    assert_close(o2[:, : t0 + 1], o[:, : t0 + 1], tol=0)
    assert not torch.allclose(o2[:, t0 + 1 :], o[:, t0 + 1 :])


def test_batch_and_head_independence():
    x = make_inputs(B=3, H=2, T=9, seed=3)
    o, s = dgd_rule_chunk(*x, chunk_size=4)
    for b in range(3):
        for h in range(2):
            q, k, w, eta, alpha = (t[b : b + 1, :, h : h + 1] for t in x[:5])
            s0 = x[5][b : b + 1, h : h + 1]
            o_bh, s_bh = dgd_rule_chunk(q, k, w, eta, alpha, s0, chunk_size=4)
            assert_close(o_bh, o[b : b + 1, :, h : h + 1])
            assert_close(s_bh, s[b : b + 1, h : h + 1])


def gated_linear_attention(q, k, w, eta, alpha, s0):
    """Quadratic (T x T) form of S_t = alpha_t S_{t-1} + eta_t k_t w_tᵀ, read after write."""
    gamma = alpha.cumprod(dim=1)  # [B, T, H], global products (no chunks, no logs)
    ratio = gamma[:, :, None] / gamma[:, None, :]  # [B, T(t), T(i), H]
    causal = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril()[None, :, :, None]
    scores = torch.einsum("bthk,bihk->btih", q, k) * ratio * causal * eta[:, None]
    o = torch.einsum("btih,bihv->bthv", scores, w) + gamma[..., None] * torch.einsum(
        "bhkv,bthk->bthv", s0, q
    )
    s = gamma[:, -1, :, None, None] * s0 + torch.einsum(
        "bih,bihk,bihv->bhkv", eta * gamma[:, -1:] / gamma, k, w
    )
    return o, s


def gated_delta_rule_fla(q, k, v, g, beta, s0):
    """fla convention: S_t = a_t (I - b_t k kᵀ) S_{t-1} + b_t k vᵀ, o_t = S_tᵀ q_t."""
    state, outputs = s0.clone(), []
    for t in range(q.shape[1]):
        kt, a, b = k[:, t], g[:, t, :, None, None], beta[:, t, :, None, None]
        eye = torch.eye(kt.shape[-1], dtype=kt.dtype)
        transition = a * (eye - b * kt[..., :, None] * kt[..., None, :])
        state = transition @ state + b * kt[..., :, None] * v[:, t, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, t]))
    return torch.stack(outputs, dim=1), state


def test_without_dgd_equals_gated_linear_attention():
    x = make_inputs(T=10, seed=4)
    o_ref, s_ref = gated_linear_attention(*x)
    o, s = dgd_rule_chunk(*x, chunk_size=4, dgd=False, read_before_write=False)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


def test_with_dgd_equals_fla_gated_delta_rule():
    q, k, w, eta, alpha, s0 = make_inputs(T=10, seed=5)
    o_ref, s_ref = gated_delta_rule_fla(q, k, alpha[..., None] * w, alpha, eta / alpha, s0)
    o, s = dgd_rule_chunk(q, k, w, eta, alpha, s0, chunk_size=4, read_before_write=False)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


@pytest.mark.parametrize("dgd,read_before_write", [(True, True), (True, False), (False, True)])
def test_gradcheck(dgd, read_before_write):
    g = torch.Generator().manual_seed(6)
    B, T, H, K, V = 1, 5, 1, 2, 2
    q = torch.randn(B, T, H, K, generator=g, dtype=F64)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=F64), dim=-1)
    w = torch.randn(B, T, H, V, generator=g, dtype=F64)
    eta = 0.1 + 0.3 * torch.rand(B, T, H, generator=g, dtype=F64)
    # Keep alpha away from 1: gradcheck's +-1e-6 steps must not leave (0, 1].
    alpha = 0.6 + 0.3 * torch.rand(B, T, H, generator=g, dtype=F64)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=F64)
    inputs = tuple(t.requires_grad_() for t in (q, k, w, eta, alpha, s0))

    def fn(*args):
        return dgd_rule_chunk(*args, chunk_size=2, dgd=dgd, read_before_write=read_before_write)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize(
    "name,edit,message",
    [
        ("alpha", lambda t: t.fill_(0.0), r"alpha must be in \(0, 1\]; got 0"),
        ("alpha", lambda t: t.fill_(1.5), r"alpha must be in \(0, 1\]; got 1.5"),
        ("eta", lambda t: t.fill_(-0.1), r"eta must be >= 0; got -0.1"),
        ("q", lambda t: t.view(-1)[0].fill_(float("nan")), r"q contains NaN or inf"),
        ("s0", lambda t: t.view(-1)[0].fill_(float("inf")), r"s0 contains NaN or inf"),
    ],
)
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_bad_values_rejected(name, edit, message, impl):
    x = dict(zip(["q", "k", "w", "eta", "alpha", "s0"], make_inputs(T=4), strict=True))
    edit(x[name])
    with pytest.raises(ValueError, match=message):
        dgd_rule(**x, impl=impl)


def test_bad_shapes_and_options_rejected():
    q, k, w, eta, alpha, s0 = make_inputs(T=4)
    with pytest.raises(ValueError, match=r"w must have shape \[B, T, H, V\].*got \(2, 3, 2, 3\)"):
        dgd_rule_chunk(q, k, w[:, :3], eta, alpha, s0)
    with pytest.raises(ValueError, match=r"s0 must have shape \(2, 2, 4, 3\).*got \(2, 2, 3, 3\)"):
        dgd_rule_chunk(q, k, w, eta, alpha, s0[:, :, :3])
    with pytest.raises(ValueError, match=r"eta must have shape \(2, 4, 2\)"):
        dgd_rule_naive(q, k, w, eta[..., None], alpha, s0)
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int; got 0"):
        dgd_rule_chunk(q, k, w, eta, alpha, s0, chunk_size=0)
    with pytest.raises(
        ValueError, match=r"impl must be one of 'auto', 'naive', 'chunk', 'triton'; got 'cuda'"
    ):
        dgd_rule(q, k, w, eta, alpha, s0, impl="cuda")


def test_chunk_states():
    x = make_inputs(T=10, seed=7)
    o, s, states = dgd_rule_chunk(*x, chunk_size=4, return_chunk_states=True)
    assert states.shape == (2, 3, 2, 4, 3)  # [B, ceil(10/4), H, K, V]
    assert_close(states[:, 0], x[5], tol=0)
    # Entry n is the state after the first 4n tokens.
    for n in (1, 2):
        _, s_n = dgd_rule_naive(*(t[:, : 4 * n] for t in x[:5]), x[5])
        assert_close(states[:, n], s_n)
    o2, s2 = dgd_rule_chunk(*x, chunk_size=4)
    assert_close(o2, o, tol=0)
    assert_close(s2, s, tol=0)


def test_auto_dispatch_is_chunk():
    x = make_inputs(T=6, seed=8)
    o, s = dgd_rule(*x, chunk_size=3)
    o_c, s_c = dgd_rule_chunk(*x, chunk_size=3)
    assert_close(o, o_c, tol=0)
    assert_close(s, s_c, tol=0)


@pytest.mark.parametrize("dgd", [True, False])
def test_one_chunk_body_equals_the_token_loop(dgd):
    """The unchecked head-major per-chunk body HOPE uses (read before write)."""
    from clbench.kernels.dgd_rule import dgd_rule_one_chunk

    g = torch.Generator().manual_seed(7)
    B, T, H, K, V = 2, 6, 3, 4, 5
    q, k = torch.randn(B, T, H, K, generator=g, dtype=torch.float64), torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    k = torch.nn.functional.normalize(k, dim=-1)
    w = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    eta = 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    alpha = 0.5 + 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
    o_ref, s_ref = dgd_rule_naive(q, k, w, eta, alpha, s0, dgd=dgd)
    head_major = [x.transpose(1, 2) for x in (q, k, w, eta, alpha)]
    o, s = dgd_rule_one_chunk(*head_major, s0, dgd=dgd)
    assert torch.allclose(o.transpose(1, 2), o_ref, atol=1e-12)
    assert torch.allclose(s, s_ref, atol=1e-12)
