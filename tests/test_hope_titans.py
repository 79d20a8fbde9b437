"""Self-modifying Titans: the chunked layer against its token-by-token reference, and invariants.

All in float64 on CPU, at tiny shapes.
"""

from __future__ import annotations

import pytest
import torch

from clbench.errors import NonFiniteLossError
from clbench.nested.hope.memory import InnerRule, LinearMemory
from clbench.nested.hope.reference import naive_titans
from clbench.nested.hope.titans import SelfModifyingTitans, TitansOptions

F64 = {"dtype": torch.float64}


def make_layer(seed: int = 0, d: int = 8, **options) -> SelfModifyingTitans:
    torch.manual_seed(seed)
    options.setdefault("heads", 2)
    return SelfModifyingTitans(d, TitansOptions(**options)).double()


def inputs(b: int = 2, t: int = 11, d: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# Every TitansOptions field has a case away from its default (stop_grad_writes and kernels
# change no value, only gradients and where the ops run; they are here so that stays true).
CASES = [
    {},
    {"memory": "linear"},
    {"memory_hidden_mult": 3},
    {"heads": 1},
    {"dgd": False},
    {"momentum": False},
    {"momentum_form": "inner"},
    {"memory": "linear", "dgd": False},
    {"memory": "linear", "momentum": False},
    {"memory": "linear", "momentum_form": "inner", "dgd": False},
    {"momentum_form": "inner", "retention": False},
    {"normalize_v": False},
    {"memory": "linear", "normalize_v": False, "adaptive_q": True},
    {"w1_step": "plain"},
    {"w1_step": "plain", "momentum": False},
    {"w1_step": "plain", "momentum_form": "inner"},
    {"retention": False},
    {"memory": "linear", "retention": False, "momentum": False},
    {"adaptive_k": False},
    {"adaptive_v": False},
    {"adaptive_k": False, "adaptive_v": False},
    {"adaptive_q": True},
    {"eta_max": 1.5},
    {"conv_window": 1},
    {"conv_window": 13},  # longer than the 11-token sequence
    {"chunk_other": 3, "chunk_mem": 5},  # 11 tokens: both end with a shorter chunk
    {"chunk_other": 5, "chunk_mem": 2},  # projection chunks longer than the main memory's
    {"chunk_other": 1, "chunk_mem": 1},
    {"chunk_other": 16, "chunk_mem": 16},  # one chunk longer than the sequence
    {"stop_grad_writes": True},
    {"kernels": "reference"},
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_chunked_layer_equals_token_by_token_reference(options):
    layer, x = make_layer(**options), inputs()
    with torch.no_grad():
        chunked, naive = layer(x), naive_titans(layer, x)
    assert torch.allclose(chunked, naive, atol=1e-10, rtol=0), (chunked - naive).abs().max()


def test_memories_actually_learn_in_context():
    # Guard against a vacuous equality: the outputs must depend on the inner updates.
    layer, x = make_layer(), inputs(t=12)
    with torch.no_grad():
        learning = layer(x)
        layer.rates = lambda e, a: (torch.zeros_like(e[..., 0]), torch.ones_like(a[..., 0]))
        frozen = layer(x)
    assert (learning - frozen)[:, 1:].abs().max() > 1e-3
    assert torch.allclose(learning[:, 0], frozen[:, 0])  # token 0 reads the initial state either way


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_reference_follows_the_carried_state(memory):
    # With reset policy "never" the next batch starts from the carried change of every fast
    # state (momentum buffers included); the reference must start there too.
    layer, x = make_layer(memory=memory), inputs()
    layer.reset_policy = "never"
    with torch.no_grad():
        layer(x)  # train mode: leaves layer.carried behind
        assert layer.carried is not None and layer.carried["main"]["m" if memory == "linear" else "m2"].abs().max() > 0
        layer.eval()
        chunked, naive = layer(x), naive_titans(layer, x)
    assert torch.allclose(chunked, naive, atol=1e-10, rtol=0), (chunked - naive).abs().max()


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_alpha_one_eta_zero_leaves_every_state_unchanged(memory):
    layer, x = make_layer(memory=memory), inputs()
    layer.rates = lambda e, a: (torch.zeros_like(e[..., 0]), torch.ones_like(a[..., 0]))
    with torch.no_grad():
        z, mu = layer.projected_inputs(x), layer.momentum_gates(x)
        start = layer.start_states(x.shape[0])
        k, v, q, eta, alpha, proj_final = layer.generate(z, start["proj"], mu)
        for name, value in proj_final.items():
            assert torch.equal(value, start["proj"][name]), name
        main_final, o = layer.main_memory.chunk_update(start["main"], k, v, eta, alpha, q, mu)
        for name, value in main_final.items():
            assert torch.allclose(value, start["main"][name], atol=1e-14), name
        assert torch.allclose(o, layer.main_memory.read(start["main"], q), atol=1e-12)


@pytest.mark.parametrize("options", [{}, {"memory": "linear", "momentum_form": "inner"}])
def test_causality(options):
    layer, x = make_layer(**options), inputs(t=12)
    with torch.no_grad():
        base = layer(x)
        for t in (0, 4, 7):
            changed = x.clone()
            changed[:, t + 1:] += torch.randn_like(changed[:, t + 1:])
            out = layer(changed)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1])
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_batch_independence():
    layer, x = make_layer(), inputs(b=3)
    with torch.no_grad():
        together = layer(x)
        alone = torch.cat([layer(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-12)


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_head_independence(memory):
    # Changing one head's memory must leave the other head's reads untouched.
    layer, x = make_layer(memory=memory), inputs()
    bank = layer.main_memory
    with torch.no_grad():
        z, mu = layer.projected_inputs(x), layer.momentum_gates(x)
        start = layer.start_states(x.shape[0])
        k, v, q, eta, alpha, _ = layer.generate(z, start["proj"], mu)
        _, o = bank.chunk_update(start["main"], k, bank.read(start["main"], v), eta, alpha, q, mu)
        for p in bank.parameters():
            p[1] += 0.5
        start = layer.start_states(x.shape[0])
        _, o2 = bank.chunk_update(start["main"], k, bank.read(start["main"], v), eta, alpha, q, mu)
    assert torch.allclose(o[:, 0], o2[:, 0], atol=1e-14)  # head-major: [B, heads, T, dh]
    assert not torch.allclose(o[:, 1], o2[:, 1])


@pytest.mark.parametrize("options", [{"memory": "linear"}, {"memory": "mlp", "chunk_other": 2, "chunk_mem": 3}])
def test_gradcheck_of_the_chunked_path(options):
    layer, x = make_layer(d=4, **options), inputs(b=1, t=5, d=4).requires_grad_(True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)
    # ... and with respect to a meta-learned initial state, through every inner write.
    init = layer.main_memory.s0 if options["memory"] == "linear" else layer.main_memory.s2
    original = init.detach().clone()

    def through_init(value):
        init.data = original
        return torch.func.functional_call(layer, {name: value for name, p in layer.named_parameters() if p is init}, (x.detach(),))

    assert torch.autograd.gradcheck(through_init, (original.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_without_dgd_the_linear_memory_is_a_gated_delta_rule():
    """Token by token (chunks of one), written here independently in fla's form:
    decay the state, correct the value with the decayed state, add k (x) correction."""
    torch.manual_seed(3)
    b, t, g, d = 2, 7, 3, 4
    memory = LinearMemory(g, d, InnerRule(dgd=False, momentum=False)).double()
    k = torch.nn.functional.normalize(torch.randn(b, g, t, d, **F64), dim=-1)  # head-major
    targets, q = torch.randn(b, g, t, d, **F64), torch.randn(b, g, t, d, **F64)
    eta, alpha = torch.rand(b, g, t, **F64) * 0.5, 0.5 + 0.5 * torch.rand(b, g, t, **F64)
    state, outs = memory.init_state(b), []
    for i in range(t):
        sl = slice(i, i + 1)
        state, o = memory.chunk_update(state, k[:, :, sl], targets[:, :, sl], eta[:, :, sl], alpha[:, :, sl], q[:, :, sl])
        outs.append(o)
    s, expected = memory.s0.detach().expand(b, -1, -1, -1), []
    for i in range(t):
        ki = k[:, :, i]
        expected.append(torch.einsum("bgk,bgkv->bgv", q[:, :, i], s))
        a, beta = alpha[:, :, i, None], eta[:, :, i, None] / alpha[:, :, i, None]
        value = a * targets[:, :, i]  # the delta rule's value in this scaling
        decayed = a[..., None] * s
        correction = beta * (value - torch.einsum("bgk,bgkv->bgv", ki, decayed))
        s = decayed + ki[..., :, None] * correction[..., None, :]
    assert torch.allclose(torch.cat(outs, 2), torch.stack(expected, 2), atol=1e-12)
    assert torch.allclose(state["s"], s, atol=1e-12)


def test_non_finite_inner_loop_names_layer_and_step():
    layer, x = make_layer(), inputs(t=10)
    layer.name = "blocks.0.mixer"
    x[:, 6] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"HOPE layer blocks\.0\.mixer: non-finite k .* token step 6 of 10"):
        layer(x)


@pytest.mark.parametrize("bad, match", [
    ({"memory": "deep"}, "memory must be 'linear' or 'mlp'"),
    ({"chunk_mem": 0}, "chunk_mem must be an integer >= 1"),
    ({"eta_max": 3.0}, r"eta_max must be in \(0, 2\]"),
])
def test_bad_options_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        TitansOptions(**bad)


def test_carried_state_follows_the_reset_policy_and_eval_never_writes_it():
    layer, x = make_layer(), inputs()
    layer.reset_policy = "never"
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert layer.carried is None  # D3: evaluation does not touch the training state
    layer.train()
    with torch.no_grad():
        first = layer(x)
        second = layer(x)
        carried = {k: v.clone() for k, v in layer.carried["main"].items()}
    assert not torch.allclose(first, second)  # the second batch starts where the first ended
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert all(torch.equal(carried[k], v) for k, v in layer.carried["main"].items())
    layer.reset_fast_state()
    layer.train()
    with torch.no_grad():
        assert torch.allclose(layer(x), first)
