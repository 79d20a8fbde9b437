"""The CPU fast paths of the self-modifying Titans layer against the code they replace.

- the dual form (clbench/nested/hope/dual.py) against the chunked closed forms (the layer with
  `dual_path = False`): outputs, gradients of every parameter and of the input, the projection
  bank's final state from `generate`, and the state carried over between batches; float64;
- the conv's shifted multiply-adds against aten's depthwise convolution with the same weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clbench.nested.hope.titans import CausalDepthwiseConv, SelfModifyingTitans, TitansOptions

CASES = [
    {},
    {"memory": "linear"},
    {"dgd": False},
    {"memory": "linear", "dgd": False},
    {"momentum": False},
    {"memory": "linear", "momentum": False},
    {"w1_step": "plain"},
    {"normalize_v": False, "retention": False},
    {"adaptive_k": False, "adaptive_v": False, "adaptive_q": True},
    {"chunk_other": 3, "chunk_mem": 5},  # 11 tokens: shorter last chunks
    {"memory": "linear", "chunk_other": 1, "chunk_mem": 16},
    {"heads": 1, "memory_hidden_mult": 3},
]


def make_layer(**options) -> SelfModifyingTitans:
    torch.manual_seed(0)
    options.setdefault("heads", 2)
    return SelfModifyingTitans(8, TitansOptions(**options)).double()


def inputs(b: int = 3, t: int = 11) -> torch.Tensor:
    return torch.randn(b, t, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def run(layer: SelfModifyingTitans, x: torch.Tensor, dual: bool):
    layer.dual_path = dual
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    out = layer(x)
    out.square().sum().backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in layer.parameters()]
    return out.detach(), [*grads, x.grad]


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_dual_form_equals_the_chunked_closed_forms(options):
    layer, x = make_layer(**options), inputs()
    assert layer.uses_dual(x)
    out, grads = run(layer, x, dual=True)
    ref_out, ref_grads = run(layer, x, dual=False)
    assert torch.allclose(out, ref_out, atol=1e-12, rtol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_generate_returns_the_chunked_final_state(memory):
    layer, x = make_layer(memory=memory), inputs()
    with torch.no_grad():
        z, mu = layer.projected_inputs(x), layer.momentum_gates(x)
        made = {}
        for dual in (True, False):
            layer.dual_path = dual
            made[dual] = layer.generate(z, layer.start_states(x.shape[0])["proj"], mu)
    for a, b in zip(made[True][:5], made[False][:5], strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert made[True][5].keys() == made[False][5].keys()
    for name, state in made[True][5].items():
        assert torch.allclose(state, made[False][5][name], atol=1e-12, rtol=0), name


@pytest.mark.parametrize("options", [{"momentum": False}, {"memory": "linear", "momentum": False}, {}])
def test_carried_state_is_the_same_on_both_paths(options):
    # With momentum on, a carried momentum sends later batches back to the chunked forms.
    x, carried = inputs(), {}
    for dual in (True, False):
        layer = make_layer(**options).train()
        layer.dual_path, layer.reset_policy = dual, "never"
        with torch.no_grad():
            layer(x)
            carried[dual] = (layer.carried, layer(x))
    (state, out), (ref_state, ref_out) = carried[True], carried[False]
    assert torch.allclose(out, ref_out, atol=1e-12, rtol=0)
    for bank, matrices in state.items():
        for name, value in matrices.items():
            assert torch.allclose(value, ref_state[bank][name], atol=1e-12, rtol=0), (bank, name)


def test_the_dual_form_is_only_taken_where_it_applies():
    x = inputs()
    assert not make_layer(momentum_form="inner").uses_dual(x)
    assert not make_layer(stop_grad_writes=True).uses_dual(x)
    layer = make_layer()
    layer.carried = {"proj": {}, "main": {}}
    assert not layer.uses_dual(x)  # a carried momentum is not zero
    layer = make_layer(momentum=False)
    layer.carried = {"proj": {}, "main": {}}
    assert layer.uses_dual(x)


def test_causal_conv_equals_the_depthwise_convolution_it_replaces():
    torch.manual_seed(0)
    for window in (1, 2, 4):
        conv = CausalDepthwiseConv(6, window).double()
        x = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
        fast = conv(x)
        ref = conv.conv(F.pad(x.transpose(1, 2), (window - 1, 0))).transpose(1, 2)
        assert torch.allclose(fast, ref, atol=1e-14, rtol=0)
        grads = torch.autograd.grad(fast.square().sum(), [x, *conv.parameters()])
        ref_grads = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.allclose(g, r, atol=1e-12, rtol=0)


@pytest.mark.parametrize("momentum", [True, False])
def test_gate_rows_and_extension_have_the_right_gradients(momentum):
    from clbench.nested.hope.dual_gates import Gates

    g = torch.Generator().manual_seed(2)
    alpha = torch.rand(3, 7, generator=g, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(True)
    mu = torch.rand(3, 7, generator=g, dtype=torch.float64).requires_grad_(True) if momentum else None

    def rows(alpha, *mu):
        gates = Gates(mu[0] if mu else None, alpha)
        gates.extend(alpha[:, :3])
        gates.extend(alpha[:, 3:])
        return gates.rows(1, 5, 6)

    assert torch.autograd.gradcheck(rows, (alpha, *([mu] if momentum else [])))
