"""clbench.kernels.dgd_rule.triton: the Triton kernel against `dgd_rule_chunk`, on CPU.

Why a subprocess: Triton reads TRITON_INTERPRET when a kernel is *decorated*, i.e. when
`clbench.kernels.dgd_rule.triton` is first imported, and a module is imported once per
process. Other test modules in the same pytest run may import it (or triton) first, and
setting the variable from a test would leak into every later test. So the kernel checks
run once, in a fresh `python` running this very file as a script with TRITON_INTERPRET=1
(`main` below); it prints one JSON line of measurements and the tests assert on them.
This keeps the file self-contained and pays the interpreter start-up once. The checks
that need no kernel run (dispatch rules, input validation, the CPU error without the
interpreter) run in-process.

Tolerances: fp32 kernel vs fp32 chunked closed form, relative-norm error below 1e-4
(nested_learning.md §9.4); measured errors are about 1e-7.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import clbench.kernels.dgd_rule as dgd_pkg
from clbench.kernels.dgd_rule import dgd_rule, dgd_rule_chunk, resolve_impl
from clbench.kernels.dgd_rule.testing import random_inputs

pytestmark = [
    pytest.mark.cpu_interpreter,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
]

TOL = 1e-4
GUARD = 64  # NaN elements after each output buffer: an out-of-bounds store would overwrite them

# name -> make_inputs shape overrides and kernel flags. T = 21 is no multiple of any chunk.
FORWARD_CASES = {
    f"dgd={dgd}-rbw={rbw}-C{c}": {"chunk_size": c, "dgd": dgd, "read_before_write": rbw}
    for dgd in (True, False)
    for rbw in (True, False)
    for c in (4, 8, 16)
}
FORWARD_CASES["B1-H1-T64-K32-V32-C16"] = {
    "B": 1,
    "H": 1,
    "T": 64,
    "K": 32,
    "V": 32,
    "chunk_size": 16,
}
FORWARD_CASES["T3-one-partial-chunk"] = {"T": 3, "chunk_size": 16, "read_before_write": False}


def make_inputs(B=2, T=21, H=2, K=5, V=7, seed=0, alpha_low=0.5, dtype=torch.float32):
    return random_inputs(B, T, H, K, V, seed=seed, alpha_low=alpha_low, dtype=dtype)


# ---- run in the subprocess, under TRITON_INTERPRET=1 -------------------------------


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def forward_case(chunk_size, dgd=True, read_before_write=True, **shape):
    from clbench.kernels.dgd_rule.triton import dgd_rule_triton_forward

    x = make_inputs(**shape, seed=chunk_size)
    (B, T, H, K), V = x[0].shape, x[2].shape[-1]
    shapes = [(B, T, H, V), (B, H, K, V), (B, math.ceil(T / chunk_size), H, K, V)]
    buffers = [torch.full((math.prod(s) + GUARD,), float("nan")) for s in shapes]
    out = tuple(buf[: math.prod(s)].view(s) for buf, s in zip(buffers, shapes, strict=True))
    flags = {"dgd": dgd, "read_before_write": read_before_write, "chunk_size": chunk_size}
    dgd_rule_triton_forward(*x, **flags, return_chunk_states=True, out=out)
    ref = dgd_rule_chunk(*x, **flags, return_chunk_states=True)
    errs = [rel_err(a, b) for a, b in zip(out, ref, strict=True)]
    return {
        "err_o": errs[0],
        "err_state": errs[1],
        "err_chunk_states": errs[2],
        "all_written": all(bool(torch.isfinite(t).all()) for t in out),
        "guards_intact": all(bool(buf[-GUARD:].isnan().all()) for buf in buffers),
    }


def non_contiguous_case():
    from clbench.kernels.dgd_rule.triton import dgd_rule_triton

    g = torch.Generator().manual_seed(11)
    B, T, H, K, V = 2, 13, 3, 6, 5
    q = torch.randn(B, H, T, K, generator=g).transpose(1, 2)
    k = F.normalize(torch.randn(B, H, T, K, generator=g), dim=-1).transpose(1, 2)
    w = torch.randn(B, T, H, 2 * V, generator=g)[..., ::2]
    eta = (0.5 * torch.rand(B, H, T, generator=g)).transpose(1, 2)
    alpha = (1 - 0.5 * torch.rand(B, H, T, generator=g)).transpose(1, 2)
    s0 = torch.randn(B, H, V, K, generator=g).transpose(-1, -2)
    x = (q, k, w, eta, alpha, s0)
    flags = {"chunk_size": 8, "read_before_write": False}
    o, s = dgd_rule_triton(*x, **flags)
    o_ref, s_ref = dgd_rule_chunk(*x, **flags)
    return {
        "inputs_non_contiguous": not any(t.is_contiguous() for t in x),
        "err_o": rel_err(o, o_ref),
        "err_state": rel_err(s, s_ref),
    }


def strong_decay_case():
    """alpha = 1e-30: Γ underflows inside a chunk; the log-space ratios must stay finite."""
    from clbench.kernels.dgd_rule.triton import dgd_rule_triton

    q, k, w, eta, _, s0 = make_inputs(T=16, seed=3)
    alpha = torch.full_like(eta, 1e-30)
    o, s = dgd_rule_triton(q, k, w, eta, alpha, s0, chunk_size=8)
    o_ref, s_ref = dgd_rule_chunk(*(t.double() for t in (q, k, w, eta, alpha, s0)), chunk_size=8)
    finite = bool(torch.isfinite(o).all() and torch.isfinite(s).all())
    return {"finite": finite, "err_o": rel_err(o, o_ref), "err_state": rel_err(s, s_ref)}


def backward_case(state_in_loss: bool, needs_grad: tuple[bool, ...]):
    """Gradients through DGDRuleTriton's recompute backward vs autograd through dgd_rule_chunk.

    The Triton backward (the default) has its own checks in test_dgd_rule_triton_backward.py.
    """
    from clbench.kernels.dgd_rule.triton import DGDRuleTriton

    x = make_inputs(T=11, seed=5)
    g = torch.Generator().manual_seed(6)
    grad_o = torch.randn(x[2].shape, generator=g)
    grad_s = torch.randn(x[5].shape, generator=g)

    def grads(fn):
        inputs = [t.clone().requires_grad_(need) for t, need in zip(x, needs_grad, strict=True)]
        o, s = fn(*inputs)
        loss = (o * grad_o).sum() + ((s * grad_s).sum() if state_in_loss else 0.0)
        wanted = [t for t in inputs if t.requires_grad]
        return torch.autograd.grad(loss, wanted)

    ours = grads(lambda *a: DGDRuleTriton.apply(*a, True, True, 4, "recompute"))
    ref = grads(lambda *a: dgd_rule_chunk(*a, chunk_size=4))
    return {"n_grads": len(ours), "err": max(rel_err(a, b) for a, b in zip(ours, ref, strict=True))}


def dispatch_case():
    from clbench.kernels.dgd_rule.triton import dgd_rule_triton

    x = make_inputs(T=9, seed=7)
    o_kernel, s_kernel = dgd_rule_triton(*x, chunk_size=4)
    os.environ["CLBENCH_KERNELS"] = "triton"
    resolved_by_env = resolve_impl("auto", x[0])
    o_env, s_env = dgd_rule(*x, chunk_size=4)
    del os.environ["CLBENCH_KERNELS"]
    o_forced, s_forced = dgd_rule(*x, chunk_size=4, impl="triton")
    return {
        "resolved_by_env": resolved_by_env,
        "env_runs_kernel": bool(torch.equal(o_env, o_kernel) and torch.equal(s_env, s_kernel)),
        "forced_runs_kernel": bool(
            torch.equal(o_forced, o_kernel) and torch.equal(s_forced, s_kernel)
        ),
        "resolved_on_cpu": resolve_impl("auto", x[0]),
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    results = {name: forward_case(**case) for name, case in FORWARD_CASES.items()}
    results["non_contiguous"] = non_contiguous_case()
    results["strong_decay"] = strong_decay_case()
    results["backward_all"] = backward_case(True, (True,) * 6)
    results["backward_o_only_some_inputs"] = backward_case(
        False, (True, False, True, False, True, True)
    )
    results["dispatch"] = dispatch_case()
    print(json.dumps(results))


# ---- tests (in the pytest process) -------------------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    from .kernel_testing import run_interpreted  # not at the top: see kernel_testing.py

    return run_interpreted(__file__)


@pytest.mark.parametrize("name", list(FORWARD_CASES))
def test_forward_matches_chunk(interpreted, name):
    r = interpreted[name]
    assert r["all_written"], "some output element kept its NaN poison"
    assert r["guards_intact"], "the kernel stored past the end of an output"
    assert max(r["err_o"], r["err_state"], r["err_chunk_states"]) < TOL, r


def test_non_contiguous_inputs(interpreted):
    r = interpreted["non_contiguous"]
    assert r["inputs_non_contiguous"]
    assert max(r["err_o"], r["err_state"]) < TOL, r


def test_strong_decay_stays_finite(interpreted):
    r = interpreted["strong_decay"]
    assert r["finite"]
    assert max(r["err_o"], r["err_state"]) < TOL, r


@pytest.mark.parametrize("name,n_grads", [("backward_all", 6), ("backward_o_only_some_inputs", 4)])
def test_backward_equals_chunk_autograd(interpreted, name, n_grads):
    r = interpreted[name]
    assert r["n_grads"] == n_grads
    assert r["err"] < 1e-6, r  # the same chunked graph on both sides


def test_dispatch_under_interpreter(interpreted):
    r = interpreted["dispatch"]
    assert r == {
        "resolved_by_env": "triton",
        "env_runs_kernel": True,
        "forced_runs_kernel": True,
        "resolved_on_cpu": "chunk",
    }


def test_resolve_impl_rules(monkeypatch):
    cpu = torch.zeros(1)
    gpu32 = SimpleNamespace(is_cuda=True, dtype=torch.float32)  # only these two fields are read
    gpu64 = SimpleNamespace(is_cuda=True, dtype=torch.float64)
    monkeypatch.delenv("CLBENCH_KERNELS", raising=False)
    assert resolve_impl("auto", cpu) == "chunk"
    assert resolve_impl("auto", gpu32) == "triton"
    assert resolve_impl("auto", gpu64) == "chunk"  # the kernel is fp32-only
    assert resolve_impl("naive", gpu32) == "naive"
    monkeypatch.setattr(dgd_pkg, "_triton_installed", lambda: False)
    assert resolve_impl("auto", gpu32) == "chunk"
    monkeypatch.setenv("CLBENCH_KERNELS", "reference")
    assert resolve_impl("auto", gpu32) == "chunk"
    monkeypatch.setenv("CLBENCH_KERNELS", "triton")
    assert resolve_impl("auto", cpu) == "triton"
    assert resolve_impl("chunk", cpu) == "chunk"  # the variable only overrides "auto"
    monkeypatch.setenv("CLBENCH_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"CLBENCH_KERNELS must be one of 'auto', 'triton'"):
        resolve_impl("auto", cpu)
    with pytest.raises(ValueError, match=r"impl must be one of 'auto', 'naive', 'chunk', 'triton'"):
        resolve_impl("cuda", cpu)


def test_triton_on_cpu_without_interpreter_raises():
    from clbench.kernels.dgd_rule import triton as kernel_module

    if kernel_module.INTERPRETED:  # this pytest process itself runs under the interpreter
        pytest.skip("TRITON_INTERPRET was set when the kernel module was imported")
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors, or TRITON_INTERPRET=1"):
        dgd_rule(*make_inputs(T=4), impl="triton")


def test_inputs_checked_like_the_other_paths():
    x = make_inputs(T=4)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]; got 0"):
        dgd_rule(*x[:4], torch.zeros_like(x[4]), x[5], impl="triton")
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int; got 0"):
        dgd_rule(*x, impl="triton", chunk_size=0)
    with pytest.raises(ValueError, match=r"computes in fp32; use impl='chunk' for float64"):
        dgd_rule(*(t.double() for t in x), impl="triton")


if __name__ == "__main__":
    main()
