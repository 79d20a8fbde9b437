"""clbench.kernels.cms_step (kernel K3): references against torch.optim, Triton against them.

The reference paths (naive per-tensor loop, chunk = foreach) are checked in fp64 against
real torch.optim.SGD / Adam / AdamW steps on the accumulated sum or mean, and against
MultiRateOptimizer itself for gradients missing from some steps. Measured on CPU (torch
2.14): bit-identical in fp64 and fp32; the tests allow 1e-12 relative.

The Triton kernel runs under TRITON_INTERPRET=1 in a subprocess (this file as a script,
`main` below), for the reason given in test_dgd_rule_triton.py: the variable is read when
the kernel is decorated, once per process. fp32 kernel vs fp32 chunk reference: relative-
norm error below 1e-4 (§9.4); measured about 1e-8 (a few ulps: torch's CPU kernels fuse
multiply-adds, the interpreter does not).
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from clbench.kernels.cms_step import FlatLevel, Rule, cms_step, rule_from_optimizer

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)
interpreter = pytest.mark.cpu_interpreter  # the subprocess checks of the kernel
TOL = 1e-4
GUARD = 64  # NaN elements after each flat buffer: an out-of-bounds store would overwrite them
SHAPES = [(3, 5), (7,), (2, 3, 4)]
BIG_SHAPES = [(37, 29), (700,), (3, 7, 23)]  # 2,256 elements: 3 blocks of 1024, the last partial

OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.1}),
    "sgd-momentum-wd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    "adam-wd": (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    # 1 - beta1 >= 0.5 takes the other branch of torch's lerp formula
    "adam-beta1-0.3": (torch.optim.Adam, {"lr": 0.01, "betas": (0.3, 0.99)}),
}
RULES = {
    name: rule_from_optimizer(cls([torch.zeros(1)], **kw)) for name, (cls, kw) in OPTIMIZERS.items()
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def schedule(n_steps: int, period: int, reduction: str):
    """(due, inv_count) per step, as MultiRateOptimizer fires; the last step flushes."""
    pending = 0
    for t in range(n_steps):
        pending += 1
        due = pending == period or t == n_steps - 1
        inv = 1 / pending if reduction == "mean" and pending > 1 else 1.0
        yield due, (inv if due else 1.0)
        pending = 0 if due else pending


def random_tensors(g, shapes, dtype):
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


# ---- reference paths vs torch.optim, in process ------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("period", [1, 3])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_references_equal_torch_optim_fp64(name, period, reduction):
    cls, kwargs = OPTIMIZERS[name]
    g = torch.Generator().manual_seed(period)
    init = random_tensors(g, SHAPES, torch.float64)
    torch_params = [p.clone().requires_grad_() for p in init]
    opt = cls(torch_params, **kwargs)
    levels = {
        impl: FlatLevel([p.clone() for p in init], RULES[name]) for impl in ("naive", "chunk")
    }
    acc = [torch.zeros_like(p) for p in init]
    for due, inv in schedule(8, period, reduction):
        grads = random_tensors(g, SHAPES, torch.float64)
        for impl, level in levels.items():
            assert cms_step(level, grads, due=due, inv_count=inv, impl=impl) == impl
        torch._foreach_add_(acc, grads)
        if due:  # torch.optim on the chunk's sum or mean, as MultiRateOptimizer feeds it
            for p, a in zip(torch_params, acc, strict=True):
                p.grad = a * inv
            opt.step()
            torch._foreach_zero_(acc)
    for level in levels.values():
        for ours, ref in zip(level.params, torch_params, strict=True):
            assert rel_err(ours, ref) < 1e-12
        for name_, views in level.state_views().items():
            for view, p in zip(views, torch_params, strict=True):
                assert rel_err(view, opt.state[p][name_]) < 1e-12
        if cls is not torch.optim.SGD:  # Adam's per-parameter step count
            assert level.steps == [int(opt.state[p]["step"]) for p in torch_params]
    a, b = levels.values()
    assert all(rel_err(x, y) < 1e-12 for x, y in zip(a.params, b.params, strict=True))


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_missing_gradients_match_multirate_optimizer(impl):
    """Tensor 1 has no gradient in some steps, tensor 2 none in the whole first chunk:
    torch.optim skips them (.grad None), so their Adam step counts drift apart."""
    from clbench.nested.multirate import Level, MultiRateOptimizer

    g = torch.Generator().manual_seed(3)
    init = random_tensors(g, SHAPES, torch.float64)
    params = [torch.nn.Parameter(p.clone()) for p in init]
    mro = MultiRateOptimizer(
        [Level("slow", params, period=3)],
        lambda i, ps, mult: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1),
        reduction="mean",
        kernel=False,  # the per-level torch.optim path, so the kernel is checked against it
    )
    level = FlatLevel([p.clone() for p in init], RULES["adam-wd"])
    for t in range(9):
        grads = random_tensors(g, SHAPES, torch.float64)
        grads[1] = None if t % 2 else grads[1]
        grads[2] = None if t < 3 else grads[2]
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad
        mro.step()
        due = (t + 1) % 3 == 0
        cms_step(level, grads, due=due, inv_count=1 / 3 if due else 1.0, impl=impl)
    assert level.steps == [3, 3, 2]
    for ours, ref in zip(level.params, params, strict=True):
        assert rel_err(ours, ref.detach()) < 1e-12


def test_bound_parameters_are_views_of_the_flat_buffer():
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    values = [p.detach().clone() for p in params]
    level = FlatLevel(params, RULES["sgd"], bind=True)
    assert level.unbound() == []
    assert torch.equal(level.flat_param, torch.cat([v.reshape(-1) for v in values]))
    cms_step(level, [torch.ones(s) for s in SHAPES], due=True, impl="chunk")
    assert torch.equal(level.flat_param[:15], values[0].reshape(-1) - 0.1)
    params[1].data = params[1].data.clone()  # e.g. a reset that replaces the storage
    assert level.unbound() == [1]


def test_flat_gradient_equals_per_tensor_gradients():
    rule = RULES["adamw"]
    a, b = (FlatLevel([torch.ones(s) for s in SHAPES], rule) for _ in range(2))
    grads = random_tensors(torch.Generator().manual_seed(0), SHAPES, torch.float32)
    cms_step(a, grads, due=True, impl="chunk")
    cms_step(b, torch.cat([x.reshape(-1) for x in grads]), due=True, impl="chunk")
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params, strict=True))


def test_clear_errors():
    with pytest.raises(
        ValueError, match=r"unknown update rule 'rmsprop'; accepted: 'sgd', 'adam', 'adamw'"
    ):
        Rule("rmsprop", lr=0.1)
    level = FlatLevel([torch.zeros(3)], RULES["sgd"])
    with pytest.raises(ValueError, match=r"impl must be one of 'auto', 'naive', 'chunk', 'triton'"):
        cms_step(level, [torch.zeros(3)], due=False, impl="cuda")
    with pytest.raises(ValueError, match=r"expected 1 gradients"):
        cms_step(level, [], due=False)
    with pytest.raises(ValueError, match=r"flat gradient must have shape \(3,\)"):
        cms_step(level, torch.zeros(4), due=False)
    with pytest.raises(
        ValueError, match=r"accepted: torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW"
    ):
        rule_from_optimizer(torch.optim.RMSprop([torch.zeros(1)]))
    with pytest.raises(ValueError, match=r"does not support SGD\(nesterov=...\)"):
        rule_from_optimizer(torch.optim.SGD([torch.zeros(1)], lr=0.1, momentum=0.9, nesterov=True))


def test_auto_dispatch_on_cpu(monkeypatch):
    level = FlatLevel([torch.zeros(3)], RULES["sgd"])
    monkeypatch.delenv("CLBENCH_KERNELS", raising=False)
    assert cms_step(level, [torch.zeros(3)], due=False) == "chunk"
    monkeypatch.setenv("CLBENCH_KERNELS", "reference")
    assert cms_step(level, [torch.zeros(3)], due=False) == "chunk"


@needs_triton
def test_triton_on_cpu_without_interpreter_raises():
    from clbench.kernels.cms_step import triton as kernel_module

    if kernel_module.INTERPRETED:
        pytest.skip("TRITON_INTERPRET was set when the kernel module was imported")
    level = FlatLevel([torch.zeros(3)], RULES["sgd"])
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors, or TRITON_INTERPRET=1"):
        cms_step(level, [torch.zeros(3)], due=False, impl="triton")


@needs_triton
def test_kernel_compiles_for_sm90():
    """Compile every rule variant to a Hopper cubin (no GPU needed: Triton ships ptxas)."""
    from clbench.kernels.cms_step import triton as kernel_module

    from .kernel_testing import compile_for_sm90

    if kernel_module.INTERPRETED:
        pytest.skip("TRITON_INTERPRET was set when the kernel module was imported")
    names = kernel_module._cms_step_kernel.arg_names
    signature = {n: "*fp32" for n in names[:5]} | {n: "fp32" for n in names[5:-4]}
    signature |= {"N": "i32", "due": "i32"}
    for rule, momentum, wd in [(0, False, 0), (0, True, 1), (1, False, 1), (1, False, 2)]:
        constants = {"RULE": rule, "MOMENTUM": momentum, "WD": wd, "BLOCK": 1024}
        assert compile_for_sm90(kernel_module._cms_step_kernel, signature, constants)


# ---- run in the subprocess, under TRITON_INTERPRET=1 -------------------------------


def level_case(name: str, bind: bool):
    """A fp32 level stepped by the kernel vs by the chunk reference; max error over all
    steps of params, accumulator and optimizer state."""
    g = torch.Generator().manual_seed(len(name))
    init = random_tensors(g, BIG_SHAPES, torch.float32)
    ours = FlatLevel([p.clone() for p in init], RULES[name], bind=bind)
    ref = FlatLevel([p.clone() for p in init], RULES[name])
    err, ran = 0.0, set()
    for due, inv in [*schedule(5, 3, "mean"), *schedule(4, 2, "sum")]:
        grads = random_tensors(g, BIG_SHAPES, torch.float32)
        ran.add(cms_step(ours, grads, due=due, inv_count=inv, impl="triton"))
        cms_step(ref, grads, due=due, inv_count=inv, impl="chunk")
        pairs = [(torch.cat([p.reshape(-1) for p in lvl.params]) for lvl in (ours, ref))]
        pairs += [(ours.state[k], ref.state[k]) for k in ref.state]
        err = max(err, *(rel_err(a, b) for a, b in pairs))
        err = max(err, float((ours.acc - ref.acc).abs().max()))  # zeros after a due step
    return {"err": err, "ran": sorted(ran), "steps": ours.steps == ref.steps}


def raw_kernel_case(name: str):
    """The kernel on guarded flat buffers, N = 333 (block 64): a not-due step must leave
    NaN-poisoned param/state untouched; a due step writes them and zeroes acc."""
    from clbench.kernels.cms_step.triton import cms_step_triton_flat

    rule, n = RULES[name], 333
    g = torch.Generator().manual_seed(1)
    names = ["param", "grad", "acc", *rule.state_names]
    bufs = {k: torch.full((n + GUARD,), float("nan")) for k in names}
    flat = {k: buf[:n] for k, buf in bufs.items()}
    flat["grad"].copy_(torch.randn(n, generator=g))
    flat["acc"].copy_(torch.randn(n, generator=g))
    expected_acc = flat["acc"] + 0.5 * flat["grad"]
    state = {k: flat[k] for k in rule.state_names}

    def kernel(**kwargs):
        cms_step_triton_flat(
            flat["param"], flat["grad"], flat["acc"], state, rule, block=64, **kwargs
        )

    kernel(due=False, step=1, scale=0.5)
    untouched = all(bool(flat[k].isnan().all()) for k in ["param", *rule.state_names])
    err_accumulate = rel_err(flat["acc"], expected_acc)
    for k in ["param", *rule.state_names]:
        flat[k].copy_(torch.rand(n, generator=g))  # exp_avg_sq must be >= 0
    ref = FlatLevel([flat["param"].clone()], rule)  # the same due step on the reference
    ref.acc.copy_(flat["acc"])
    ref.steps = [3]
    for k in rule.state_names:
        ref.state_views()[k][0].copy_(flat[k])
    cms_step(ref, [flat["grad"]], due=True, inv_count=0.25, impl="chunk")
    kernel(due=True, step=4, inv_count=0.25)
    errs = [rel_err(flat["param"], ref.params[0])]
    errs += [rel_err(flat[k], ref.state[k]) for k in rule.state_names]
    return {
        "untouched_when_not_due": untouched,
        "err_accumulate": err_accumulate,
        "err_update": max(errs),
        "acc_zeroed": bool((flat["acc"] == 0).all()),
        "guards_intact": all(bool(buf[n:].isnan().all()) for buf in bufs.values()),
    }


def dispatch_case():
    level = FlatLevel([torch.zeros(5)], RULES["sgd"])
    os.environ["CLBENCH_KERNELS"] = "triton"
    by_env = cms_step(level, [torch.ones(5)], due=False)
    del os.environ["CLBENCH_KERNELS"]
    two = FlatLevel([torch.zeros(5), torch.zeros(2)], RULES["sgd"])
    flat = cms_step(level, torch.ones(5), due=True, impl="triton")  # acc = 2, lr 0.1
    two = FlatLevel([torch.zeros(5), torch.zeros(2)], RULES["sgd"])
    ragged = cms_step(two, [torch.ones(5), None], due=True, impl="triton")
    return {
        "by_env": by_env,
        "flat_grad": flat,
        "flat_grad_stepped": bool(torch.allclose(level.params[0], torch.full((5,), -0.2))),
        "ragged": ragged,
        "ragged_untouched": bool((two.params[1] == 0).all()),
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    results = {
        f"level-{name}-bind={bind}": level_case(name, bind)
        for name in RULES
        for bind in (False, True)
    }
    results.update({f"raw-{name}": raw_kernel_case(name) for name in RULES})
    results["dispatch"] = dispatch_case()
    print(json.dumps(results))


# ---- interpreter tests (in the pytest process) --------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    from .kernel_testing import run_interpreted  # not at the top: see kernel_testing.py

    return run_interpreted(__file__, OMP_NUM_THREADS="1")


@interpreter
@needs_triton
@pytest.mark.parametrize("bind", [False, True])
@pytest.mark.parametrize("name", list(RULES))
def test_triton_level_matches_chunk(interpreted, name, bind):
    r = interpreted[f"level-{name}-bind={bind}"]
    assert r["ran"] == ["triton"] and r["steps"]
    assert r["err"] < TOL, r


@interpreter
@needs_triton
@pytest.mark.parametrize("name", list(RULES))
def test_triton_raw_kernel_poison_and_guards(interpreted, name):
    r = interpreted[f"raw-{name}"]
    assert r["untouched_when_not_due"], "a not-due step wrote the parameter or optimizer state"
    assert r["acc_zeroed"] and r["guards_intact"], r
    assert max(r["err_accumulate"], r["err_update"]) < TOL, r


@interpreter
@needs_triton
def test_triton_dispatch_under_interpreter(interpreted):
    assert interpreted["dispatch"] == {
        "by_env": "triton",
        "flat_grad": "triton",
        "flat_grad_stepped": True,
        "ragged": "chunk",
        "ragged_untouched": True,
    }


if __name__ == "__main__":
    main()
