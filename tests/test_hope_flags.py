"""Each Table 6 flag (and each option of our own choices) has the observable effect it names.

A test per flag, each written so it fails if the layer ignored the flag: expected states are
computed by hand here (autograd for the inner gradient), intermediates are observed through
the layer's hooks (projected_inputs, generate, momentum_gates, rates, start_states) and the
banks' read/chunk_update/self_update, and writes are recorded by wrapping self_update.
Float64, tiny shapes; the `strategy.cms` test trains a tiny cell through the runner.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbench import fastdata
from clbench.registry import SCENARIOS
from clbench.resolve import resolve_config
from clbench.runner import build_strategy, seed_everything

from .test_hope_titans import F64, inputs, make_layer


def rand_chunk(layer, n: int, b: int = 2, seed: int = 0, key_norm: float = 1.0):
    """Bank inputs for the main memory: keys (norm key_norm), targets, eta, alpha, queries, mu."""
    g = torch.Generator().manual_seed(seed)
    h, d = layer.heads, layer.head_dim
    k = key_norm * F.normalize(torch.randn(b, h, n, d, generator=g, **F64), dim=-1)
    v, q = torch.randn(b, h, n, d, generator=g, **F64), torch.randn(b, h, n, d, generator=g, **F64)
    eta = 0.1 + 0.3 * torch.rand(b, h, n, generator=g, **F64)
    alpha = 0.5 + 0.4 * torch.rand(b, h, n, generator=g, **F64)
    mu = 0.2 + 0.6 * torch.rand(b, h, n, generator=g, **F64)
    return k, v, eta, alpha, q, mu


def read(weights: dict, z: torch.Tensor) -> torch.Tensor:
    if "s" in weights:
        return z @ weights["s"]
    return z + F.silu(z @ weights["s2"]) @ weights["s1"]


def one_token(state, k, target, eta, alpha, *, dgd: bool, w1_step: str = "normalized"):
    """Expected weights after one token from a fresh state (zero momentum, where every form
    reduces to S_1 = alpha S_0 + step): step = -eta k k^T S_0 [DGD, input side] - eta grad."""
    names = ["s"] if "s" in state else ["s2", "s1"]
    k, target, eta, alpha = k[:, :, 0], target[:, :, 0], eta[:, :, 0, None, None], alpha[:, :, 0, None, None]
    leaves = {n: state[n].detach().clone().requires_grad_(True) for n in names}
    loss = 0.5 * (read(leaves, k[..., None, :]) - target[..., None, :]).pow(2).sum()
    grads = dict(zip(names, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    expected = {}
    for n in names:
        e = eta
        if n == "s1" and w1_step == "normalized":
            e = eta / F.silu(k[..., None, :] @ state["s2"]).pow(2).sum(-1, keepdim=True).clamp_min(1.0)
        step = -e * grads[n]
        if dgd and n != "s1":
            step = step - e * k[..., :, None] * (k[..., None, :] @ state[n])
        expected[n] = alpha * state[n] + step
    return expected


def linear_chunk(s0, k, target, eta, alpha, *, dgd=True, form=None, mu=None):
    """A linear memory over one chunk: gradients at the chunk start S_0, the DGD term at
    S_{t-1}; form None (no momentum), "titans" (mu [B, G, n]) or "inner" (mu [G])."""
    s, m = s0, torch.zeros_like(s0)
    w = target - k @ s0  # -(inner gradient direction) at the chunk start, per token
    for t in range(k.shape[2]):
        kt, e, a = k[:, :, t, :, None], eta[:, :, t, None, None], alpha[:, :, t, None, None]
        step = e * kt * w[:, :, t, None, :] - (e * kt * (kt.transpose(-1, -2) @ s) if dgd else 0)
        if form is None:
            s = a * s + step
        elif form == "titans":
            m = mu[:, :, t, None, None] * m + step
            s = a * s + m
        else:
            m = mu[:, None, None] * m + (a - 1) * s + step
            s = s + m
    return s, m


def assert_close(a, b, tol=1e-12):
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


def differ(a, b, margin=1e-6) -> bool:
    return (a - b).abs().max() > margin


# ------------------------------------------------------------------ dgd
@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("dgd", [True, False])
def test_dgd_flag_adds_the_k_kT_S_term_on_the_input_side(dgd, momentum, memory):
    layer = make_layer(memory=memory, dgd=dgd, momentum=momentum)
    bank, (k, v, eta, alpha, q, mu) = layer.main_memory, rand_chunk(layer, 1)
    state = bank.init_state(2)
    with torch.no_grad():
        new, _ = bank.chunk_update(state, k, v, eta, alpha, q, mu if momentum else None)
    expected, other = (one_token(state, k, v, eta, alpha, dgd=flag) for flag in (dgd, not dgd))
    for name, value in expected.items():
        assert_close(new[name], value)
    key = "s" if memory == "linear" else "s2"
    assert differ(expected[key], other[key])  # the term is not negligible here
    if memory == "mlp":
        assert_close(expected["s1"], other["s1"], tol=0)  # W1 never gets it


# ------------------------------------------------------------------ momentum
def one_chunk_layer(**options):
    """A linear-memory layer whose projection and main chunks both span the 6-token input."""
    layer, x = make_layer(memory="linear", chunk_other=6, chunk_mem=6, **options), inputs(t=6)
    with torch.no_grad():
        start = layer.start_states(2)
        mu = layer.momentum_gates(x)
        k, v, q, eta, alpha, proj = layer.generate(layer.projected_inputs(x), start["proj"], mu)
        main, _ = layer.main_memory.self_update(start["main"], k, v, eta, alpha, q, mu)
    n_mem = layer.proj_memory.s0.shape[0] // layer.heads
    rep = lambda t: t.repeat(1, n_mem, *[1] * (t.dim() - 2))  # noqa: E731 (heads -> every memory's groups)
    cases = [(start["main"]["s"], main, k, v, eta, alpha, mu),
             (start["proj"]["s"], proj, rep(k), rep(v), rep(eta), rep(alpha), None if mu is None else rep(mu))]
    return layer, x, cases


def test_without_momentum_every_memory_follows_the_plain_rule():
    layer, x, cases = one_chunk_layer(momentum=False)
    assert layer.momentum_gate is None and layer.momentum_gates(x) is None
    for s0, final, k, v, eta, alpha, _ in cases:  # main memory, then every projection memory
        assert set(final) == {"s"}
        expected, _ = linear_chunk(s0, k, v @ s0, eta, alpha)
        assert_close(final["s"], expected)


def test_with_momentum_every_memory_carries_a_buffer_gated_by_mu():
    layer, x, cases = one_chunk_layer(momentum=True)
    for s0, final, k, v, eta, alpha, mu in cases:
        assert set(final) == {"s", "m"} and final["m"].abs().max() > 1e-3
        expected, m = linear_chunk(s0, k, v @ s0, eta, alpha, form="titans", mu=mu)
        assert_close(final["s"], expected)
        assert_close(final["m"], m)
        plain, _ = linear_chunk(s0, k, v @ s0, eta, alpha)
        assert differ(final["s"], plain)


def test_momentum_gate_depends_on_the_token_it_gates():
    layer, x = make_layer(), inputs(t=6)
    with torch.no_grad():
        mu = layer.momentum_gates(x)
        changed = x.clone()
        changed[:, 3] += 1.0
        mu2 = layer.momentum_gates(changed)
    assert mu.shape == (2, layer.heads, 6) and ((mu > 0) & (mu < 1)).all()
    assert differ(mu[:, :, 3], mu2[:, :, 3])
    assert torch.equal(mu[:, :, [0, 1, 2, 4, 5]], mu2[:, :, [0, 1, 2, 4, 5]])


# ------------------------------------------------------------------ retention
def record_writes(layer) -> list[torch.Tensor]:
    """Wrap both banks' self_update (the layer's only writes) to record the alpha they get."""
    alphas = []
    for bank in (layer.proj_memory, layer.main_memory):
        def wrapped(state, keys, values, eta, alpha, queries, mu=None, _original=bank.self_update):
            alphas.append(alpha.detach().clone())
            return _original(state, keys, values, eta, alpha, queries, mu)
        bank.self_update = wrapped
    return alphas


@pytest.mark.parametrize("momentum_form", ["titans", "inner"])
@pytest.mark.parametrize("retention", [True, False])
def test_retention_flag_sets_alpha_of_every_write(retention, momentum_form):
    layer, x = make_layer(retention=retention, momentum_form=momentum_form), inputs(t=9)
    with torch.no_grad():
        dual = layer(x)  # the CPU dual form (dual.py) where it applies; it has no per-write hook
    layer.dual_path = False  # the chunked path, whose writes are the banks' self_update calls
    alphas = record_writes(layer)
    with torch.no_grad():
        chunked = layer(x)
    assert_close(dual, chunked)  # so what holds for the chunked writes holds for the dual form
    assert len(alphas) == 3 + 2  # projection chunks of 4 over 9 tokens, main chunks of 8
    for alpha in alphas:
        if retention:
            assert (alpha < 1).all() and alpha.min() >= 1e-6
        else:
            assert torch.equal(alpha, torch.ones_like(alpha))


def test_without_retention_alpha_is_one_whatever_its_memory_says():
    on, off = make_layer(retention=True), make_layer(retention=False)
    # [B, n, H, dh] features that drive sigmoid(<r_alpha, .> + b) to its 1e-6 floor
    features = -1e3 * on.alpha_readout.detach().sign().expand(2, 3, -1, -1)
    assert_close(on.rates(features, features)[1], torch.full((2, 3, 2), 1e-6, **F64))
    assert torch.equal(off.rates(features, features)[1], torch.ones(2, 3, 2, **F64))


# ------------------------------------------------------------------ adaptive k, v, q
def projections(layer, x):
    with torch.no_grad():
        k, v, q, *_ = layer.generate(layer.projected_inputs(x), layer.start_states(2)["proj"], layer.momentum_gates(x))
    return {"k": k, "v": v, "q": q}


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("p", ["k", "v", "q"])
def test_adaptive_projection_reads_the_memory_state(p, adaptive):
    layer, x = make_layer(**{f"adaptive_{p}": adaptive}), inputs(t=9)
    before = projections(layer, x)
    with torch.no_grad():  # another meta-learned initial state for every projection memory
        for param in layer.proj_memory.parameters():
            param.add_(0.3 * torch.randn_like(param))
    after = projections(layer, x)
    default = {"k": True, "v": True, "q": False}
    count = sum(adaptive if name == p else default[name] for name in "kvq") + 2  # + eta, alpha
    assert layer.proj_memory.s2.shape[0] == count * layer.heads
    assert differ(before[p], after[p]) == adaptive
    if not adaptive:  # the static projection: the slot input itself, normalised
        z = layer.projected_inputs(x)[:, :, "kvq".index(p)].transpose(1, 2)
        assert_close(before[p], F.normalize(z, dim=-1), tol=1e-14)


# ------------------------------------------------------------------ memory kind
@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_memory_flag_picks_the_memory_function(memory):
    layer = make_layer(memory=memory, memory_hidden_mult=3)
    bank, (h, d) = layer.main_memory, (layer.heads, layer.head_dim)
    state = bank.init_state(2)
    shapes = {n: tuple(t.shape) for n, t in state.items()}
    z = torch.randn(2, h, 5, d, **F64)
    with torch.no_grad():
        out, doubled = bank.read(state, z), bank.read(state, 2 * z)
    if memory == "linear":
        assert shapes == {"s": (2, h, d, d), "m": (2, h, d, d)}
        assert_close(out, z @ bank.s0)
        assert_close(doubled, 2 * out)  # a linear map
    else:
        w2, w1 = (2, h, d, 3 * d), (2, h, 3 * d, d)  # hidden width = memory_hidden_mult x head dim
        assert shapes == {"s2": w2, "s1": w1, "m2": w2, "m1": w1}
        assert_close(out, z + F.silu(z @ bank.s2) @ bank.s1)
        assert differ(doubled, 2 * out)  # not linear


# ------------------------------------------------------------------ normalize_v
@pytest.mark.parametrize("normalize_v", [True, False])
def test_normalize_v_flag(normalize_v):
    layer, x = make_layer(memory="linear", normalize_v=normalize_v), inputs(t=9)
    v = projections(layer, x)["v"]
    norms = v.norm(dim=-1)
    if normalize_v:
        assert_close(norms, torch.ones_like(norms))
    else:  # the raw reading M_v(z_v) of the first chunk, at the initial state
        z_v = layer.projected_inputs(x)[:, :4, 1].transpose(1, 2)
        assert_close(v[:, :, :4], z_v @ layer.proj_memory.s0[layer.heads:2 * layer.heads])
        assert differ(norms, torch.ones_like(norms), margin=1e-2)


# ------------------------------------------------------------------ w1_step
@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("w1_step", ["normalized", "plain"])
def test_w1_step_flag_scales_the_hidden_side_step(w1_step, momentum):
    layer = make_layer(memory="mlp", w1_step=w1_step, momentum=momentum)
    bank, (k, v, eta, alpha, q, mu) = layer.main_memory, rand_chunk(layer, 1, key_norm=6.0)
    state = bank.init_state(2)
    hidden = F.silu(k @ state["s2"]).pow(2).sum(-1)
    assert hidden.min() > 1.5  # ||silu(W2 k)||^2 > 1, where the two steps differ
    with torch.no_grad():
        new, _ = bank.chunk_update(state, k, v, eta, alpha, q, mu if momentum else None)
    flipped = "plain" if w1_step == "normalized" else "normalized"
    expected, other = (one_token(state, k, v, eta, alpha, dgd=True, w1_step=s) for s in (w1_step, flipped))
    assert_close(new["s1"], expected["s1"])
    assert_close(new["s2"], expected["s2"])
    assert differ(expected["s1"], other["s1"])


# ------------------------------------------------------------------ momentum_form
@pytest.mark.parametrize("form", ["titans", "inner"])
def test_momentum_form_flag(form):
    layer = make_layer(memory="linear", momentum_form=form)
    bank, (k, v, eta, alpha, q, mu) = layer.main_memory, rand_chunk(layer, 4)
    state = bank.init_state(2)
    if form == "inner":  # one static gate per memory, no data-dependent gate
        assert layer.momentum_gate is None and layer.momentum_gates(inputs()) is None
        with torch.no_grad():
            bank.momentum_logit.copy_(torch.linspace(-1.0, 1.0, layer.heads))
        static = torch.sigmoid(bank.momentum_logit.detach())
        mu = static[None, :, None].expand_as(eta)  # the same gate written per token
    else:
        assert bank.momentum_logit is None and layer.momentum_gate is not None
    with torch.no_grad():
        new, _ = bank.chunk_update(state, k, v, eta, alpha, q, mu if form == "titans" else None)
    target = v  # chunk_update takes targets as given
    titans, _ = linear_chunk(state["s"], k, target, eta, alpha, form="titans", mu=mu)
    inner, _ = linear_chunk(state["s"], k, target, eta, alpha, form="inner", mu=mu[0, :, 0])
    assert_close(new["s"], titans if form == "titans" else inner)
    assert differ(titans, inner)  # retention inside vs outside the momentum


# ------------------------------------------------------------------ strategy.cms
class FireLog:
    """After every optimizer step: which levels fired and which levels' parameters moved."""

    def __init__(self, optimizer):
        self.optimizer, self.fired, self.moved = optimizer, [], []
        original = optimizer.step

        def step(*args, **kwargs):
            before = [[p.detach().clone() for p in lvl.params] for lvl in optimizer.levels]
            original(*args, **kwargs)
            self.fired.append(list(optimizer.last_fired))
            self.moved.append([i for i, (lvl, old) in enumerate(zip(optimizer.levels, before, strict=True))
                               if any(not torch.equal(p, o) for p, o in zip(lvl.params, old, strict=True))])
        optimizer.step = step


@pytest.mark.parametrize("cms", [True, False])
def test_strategy_cms_flag_sets_the_level_periods(cms, data_root):
    overrides = {"scenario.n_experiences": 2, "scenario.train_per_exp": 64, "scenario.test_per_exp": 16,
                 "strategy.periods": [1, 2, 4], "strategy.flush": False, "strategy.cms": cms}
    config = resolve_config("pmnist", "hope", seed=0, profile="smoke", overrides=overrides)
    spec = SCENARIOS.get(config.scenario)
    stream = spec.builder(spec.options(**config.scenario_args), config.profile, config.seed, data_root, False)
    with fastdata.fast_fetch():
        seed_everything(config.seed)
        _, strategy = build_strategy(config, stream, torch.device("cpu"))
        log = FireLog(strategy.optimizer)
        for exp in stream.to_benchmark().train_stream:
            strategy.train(exp)
    periods = [lvl.period for lvl in strategy.optimizer.levels]
    n = len(log.fired)
    assert n >= 4 and n == strategy.optimizer.iteration
    assert periods == ([1, 2, 4, 1] if cms else [1, 1, 1, 1])  # the CMS levels, then the outer group
    for it, (fired, moved) in enumerate(zip(log.fired, log.moved, strict=True), start=1):
        due = [i for i, p in enumerate(periods) if it % p == 0]
        assert fired == due and moved == due, (it, fired, moved)
