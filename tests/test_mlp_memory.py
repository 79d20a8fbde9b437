"""clbench.kernels.mlp_memory (kernel K2): token loop vs chunked path vs HOPE's MLPMemory vs Triton.

In-process, float64: the chunked path equals the independent token loop (`naive.py`,
gradients by torch.func) to ~1e-12 in values and gradients, for chunk sizes that do or do
not divide T; HOPE's `MLPMemory` (no momentum) runs exactly the chunked path, and its
momentum token loop with mu = 0 gives the same result; invariants, validation, dispatch,
and an sm_90 compile of the kernel (Triton ships ptxas; no GPU needed).

Triton, as in test_dgd_rule_triton.py: the kernel checks run once in a fresh subprocess
with TRITON_INTERPRET=1 (`main` prints one JSON line; the variable is read when a kernel
is decorated, so it must not leak into this process). fp32 kernel vs fp32 chunked path,
relative-norm error < 1e-4 (measured ~1e-7), outputs NaN-poisoned with guard elements.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

from clbench.kernels.mlp_memory import mlp_memory, mlp_memory_chunk, mlp_memory_naive, resolve_impl
from clbench.kernels.mlp_memory.testing import random_inputs
from clbench.nested.hope.memory import InnerRule, MLPMemory

TOL = 1e-4
GUARD = 64  # NaN elements after each output buffer: an out-of-bounds store would overwrite them
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)

FLAG_SETS = [{"dgd": dgd, "self_modifying": sm} for dgd in (True, False) for sm in (True, False)]


def flag_id(flags):
    return ",".join(f"{k}={int(v)}" for k, v in flags.items())


# ---- in-process, float64 ---------------------------------------------------------------


@pytest.mark.parametrize("flags", FLAG_SETS, ids=flag_id)
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])  # T = 11: 3 and 4 leave a short last chunk
def test_chunk_equals_token_loop(chunk_size, flags):
    x = random_inputs(seed=chunk_size)
    ours = mlp_memory(*x, chunk_size=chunk_size, impl="chunk", **flags)
    ref = mlp_memory(*x, chunk_size=chunk_size, impl="naive", **flags)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("stop_grad_writes", [False, True])
def test_chunk_gradients_equal_token_loop_gradients(stop_grad_writes):
    x = random_inputs(B=1, T=7, seed=2)
    cot = [torch.randn_like(t) for t in (x[0], x[5], x[6])]

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in x]
        outs = fn(*leaves, chunk_size=3, self_modifying=True, stop_grad_writes=stop_grad_writes)
        loss = sum((o * c).sum() for o, c in zip(outs, cot, strict=True))
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    ours, ref = grads(mlp_memory_chunk), grads(mlp_memory_naive)
    detached = {
        name for name, g in zip("q k v eta alpha s2 s1".split(), ours, strict=True) if g is None
    }
    assert detached == ({"k", "v", "eta", "alpha"} if stop_grad_writes else set())
    for a, b in zip(ours, ref, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-10, rtol=0)


def test_gradcheck_of_the_chunked_path():
    x = [t.requires_grad_(True) for t in random_inputs(B=1, G=1, T=5, d=3, h=4, seed=4)]
    assert torch.autograd.gradcheck(
        lambda *a: mlp_memory_chunk(*a, chunk_size=2), x, eps=1e-6, atol=1e-6
    )


def memory_and_state(rule: InnerRule, seed=5, B=2, G=3, T=9, d=5, h=6, dtype=torch.float32):
    torch.manual_seed(seed)
    memory = MLPMemory(G, d, h, rule).to(dtype)
    q, k, v, eta, alpha, _, _ = random_inputs(B, G, T, d, h, seed=seed, dtype=dtype)
    return memory, memory.init_state(B), (k, v, eta, alpha, q)


@pytest.mark.parametrize("stop_grad_writes", [False, True])
@pytest.mark.parametrize("dgd", [True, False])
def test_hope_mlp_memory_runs_exactly_the_chunked_path(dgd, stop_grad_writes):
    """MLPMemory.self_update / chunk_update (no momentum): the same bits as the K2 chunked
    path, values and gradients (float32, where a different op order would show)."""
    rule = InnerRule(dgd=dgd, momentum=False, stop_grad_writes=stop_grad_writes, kernels="reference")
    memory, state, (k, v, eta, alpha, q) = memory_and_state(rule)
    flags = {"dgd": dgd, "stop_grad_writes": stop_grad_writes, "chunk_size": k.shape[2]}
    for self_modifying in (True, False):
        update = memory.self_update if self_modifying else memory.chunk_update
        new, o = update(state, k, v, eta, alpha, q)
        ref = mlp_memory_chunk(
            q, k, v, eta, alpha, state["s2"], state["s1"], self_modifying=self_modifying, **flags
        )
        assert all(torch.equal(a, b) for a, b in zip((o, new["s2"], new["s1"]), ref, strict=True))
        grads = [torch.autograd.grad(y.sum(), [memory.s2, memory.s1]) for y in (o, ref[0])]
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_hope_chunk_loop_equals_the_chunk_walk():
    """HOPE's layer calls the memory once per chunk; mlp_memory_chunk walks the same chunks."""
    memory, state, (k, v, eta, alpha, q) = memory_and_state(InnerRule(momentum=False, kernels="reference"), T=11)
    outs = []
    for start in range(0, 11, 4):
        c = slice(start, start + 4)
        state_next, o = memory.self_update(
            state, k[:, :, c], v[:, :, c], eta[:, :, c], alpha[:, :, c], q[:, :, c]
        )
        outs.append(o)
        state = state_next
    start = memory.init_state(k.shape[0])
    ref = mlp_memory_chunk(
        q, k, v, eta, alpha, start["s2"], start["s1"], chunk_size=4, self_modifying=True
    )
    assert torch.equal(torch.cat(outs, 2), ref[0])
    assert torch.equal(state["s2"], ref[1]) and torch.equal(state["s1"], ref[2])


def test_momentum_token_loop_with_zero_decay_equals_the_closed_form():
    memory, state, inputs = memory_and_state(InnerRule(momentum=True, momentum_form="inner"), dtype=torch.float64)
    with torch.no_grad():
        memory.momentum_logit.fill_(-float("inf"))  # mu = sigmoid(-inf) = 0: the plain rule
    plain, _, _ = memory_and_state(InnerRule(momentum=False, kernels="reference"), dtype=torch.float64)
    new, o = memory.self_update(state, *inputs)
    ref_new, ref_o = plain.self_update(plain.init_state(state["s2"].shape[0]), *inputs)
    assert torch.allclose(o, ref_o, atol=1e-12, rtol=0)
    assert all(torch.allclose(new[n], ref_new[n], atol=1e-12, rtol=0) for n in ("s2", "s1"))


def test_alpha_one_eta_zero_leaves_the_state_and_reads_the_start_memory():
    q, k, v, eta, alpha, s2, s1 = random_inputs(seed=6)
    o, s2_end, s1_end = mlp_memory_chunk(
        q, k, v, torch.zeros_like(eta), torch.ones_like(alpha), s2, s1, chunk_size=4
    )
    assert torch.equal(s2_end, s2) and torch.equal(s1_end, s1)
    assert torch.allclose(o, q + torch.nn.functional.silu(q @ s2) @ s1, atol=1e-14)


def test_causality_and_the_memory_learns():
    x = list(random_inputs(seed=7))
    o = mlp_memory_chunk(*x, chunk_size=4)[0]
    frozen = mlp_memory_chunk(*x[:3], torch.zeros_like(x[3]), *x[4:], chunk_size=4)[0]
    assert (o - frozen)[:, :, 1:].abs().max() > 1e-2  # the writes change later reads
    for i in (1, 2):  # perturb keys and values after token 5: reads up to 5 do not move
        x[i] = x[i].clone()
        x[i][:, :, 6:] += 0.3
    changed = mlp_memory_chunk(*x, chunk_size=4)[0]
    assert torch.equal(changed[:, :, :6], o[:, :, :6]) and not torch.allclose(changed, o)


def test_bad_inputs_are_named():
    x = random_inputs(T=4)
    with pytest.raises(
        ValueError, match=r"s1 must have shape \(2, 2, 12, 5\) .* got \(2, 2, 5, 12\)"
    ):
        mlp_memory(*x[:6], x[6].transpose(-1, -2), impl="chunk")
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]; got 0"):
        mlp_memory(*x[:4], torch.zeros_like(x[4]), *x[5:], impl="chunk")
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int; got 0"):
        mlp_memory(*x, chunk_size=0, impl="naive")
    with pytest.raises(
        ValueError, match=r"impl must be one of 'auto', 'naive', 'chunk', 'triton'; got 'gpu'"
    ):
        mlp_memory(*x, impl="gpu")


def test_auto_runs_the_chunked_path_on_cpu(monkeypatch):
    monkeypatch.delenv("CLBENCH_KERNELS", raising=False)
    x = random_inputs(seed=8)
    assert resolve_impl("auto", x[0]) == "chunk"
    assert all(torch.equal(a, b) for a, b in zip(mlp_memory(*x), mlp_memory_chunk(*x), strict=True))


@needs_triton
def test_triton_refusals():
    from clbench.kernels.mlp_memory import triton as kernel_module

    x = random_inputs(T=4)
    with pytest.raises(ValueError, match=r"computes in fp32; use impl='chunk' for float64"):
        mlp_memory(*x, impl="triton")
    x32 = [t.float() for t in random_inputs(T=200)]
    with pytest.raises(
        ValueError, match=r"chunks of at most 128 tokens; got chunk_size=256 for T=200"
    ):
        mlp_memory(*x32, chunk_size=256, impl="triton")
    if not kernel_module.INTERPRETED:
        with pytest.raises(RuntimeError, match=r"needs CUDA tensors, or TRITON_INTERPRET=1"):
            mlp_memory(*x32, impl="triton")


@needs_triton
def test_kernel_compiles_for_sm90():
    """Compile both flag branches to a Hopper cubin at a small tile (a few seconds each)."""
    from clbench.kernels.mlp_memory import triton as kernel_module

    from .kernel_testing import compile_for_sm90

    kernel = kernel_module._mlp_memory_fwd_kernel
    if kernel_module.INTERPRETED:
        pytest.skip("TRITON_INTERPRET was set when the kernel module was imported")
    names = kernel.arg_names
    signature = {n: "*fp32" for n in names[:10]} | {n: "i32" for n in names[10:15]}
    for flag in (True, False):
        constants = {"BT": 16, "BD": 16, "BH": 16, "DGD": flag, "SELF_MODIFYING": flag}
        assert compile_for_sm90(kernel, signature, constants)


# ---- run in the subprocess, under TRITON_INTERPRET=1 ------------------------------------

# name -> random_inputs shape overrides and kernel flags; d = 5, h = 12 are not powers of two.
FORWARD_CASES = {
    f"C{c}-{flag_id(f)}": {"chunk_size": c, "T": 13, **f} for c in (4, 16) for f in FLAG_SETS
}
FORWARD_CASES["B1-G1-C5"] = {"B": 1, "G": 1, "T": 12, "d": 7, "h": 20, "chunk_size": 5}
FORWARD_CASES["B1-G1-T1"] = {"B": 1, "G": 1, "T": 1, "chunk_size": 4, "self_modifying": True}
# Γ underflows inside a chunk: the log-space ratios must stay finite.
FORWARD_CASES["strong-decay"] = {"T": 8, "chunk_size": 8, "self_modifying": True, "alpha": 1e-30}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def forward_case(chunk_size, dgd=True, self_modifying=False, alpha=None, **shape):
    from clbench.kernels.mlp_memory.triton import mlp_memory_triton_forward

    x = random_inputs(**{"B": 2, "G": 2, **shape}, seed=chunk_size, dtype=torch.float32)
    if alpha is not None:
        x = (*x[:4], torch.full_like(x[4], alpha), *x[5:])
    shapes = [x[0].shape, x[5].shape, x[6].shape]
    buffers = [torch.full((math.prod(s) + GUARD,), float("nan")) for s in shapes]
    out = tuple(buf[: math.prod(s)].view(s) for buf, s in zip(buffers, shapes, strict=True))
    flags = {"chunk_size": chunk_size, "dgd": dgd, "self_modifying": self_modifying}
    mlp_memory_triton_forward(*x, **flags, out=out)
    ref = mlp_memory_chunk(*x, **flags)
    return {
        "err": max(rel_err(a, b) for a, b in zip(out, ref, strict=True)),
        "err_branch": rel_err(out[0] - x[0], ref[0] - x[0]),  # o - q: the memory's own part
        "all_written": all(bool(torch.isfinite(t).all()) for t in out),
        "guards_intact": all(bool(buf[-GUARD:].isnan().all()) for buf in buffers),
    }


def non_contiguous_case():
    from clbench.kernels.mlp_memory.triton import mlp_memory_triton

    x = random_inputs(B=2, G=3, T=10, d=6, h=9, seed=11, dtype=torch.float32)
    # The same values in strided layouts: token-major buffers seen head-major, transposed states.
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in x[:5]]
    strided += [t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in x[5:]]
    ours = mlp_memory_triton(*strided, chunk_size=4, self_modifying=True)
    ref = mlp_memory_chunk(*x, chunk_size=4, self_modifying=True)
    return {
        "inputs_non_contiguous": not any(t.is_contiguous() for t in strided),
        "err": max(rel_err(a, b) for a, b in zip(ours, ref, strict=True)),
    }


def backward_case(needs_grad, stop_grad_writes=False, outputs_in_loss=(True, True, True)):
    """Gradients through MLPMemoryTriton vs plain autograd through mlp_memory_chunk."""
    from clbench.kernels.mlp_memory.triton import mlp_memory_triton

    x = random_inputs(B=1, G=2, T=9, seed=5, dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    cot = [torch.randn(t.shape, generator=g) for t in (x[0], x[5], x[6])]

    def grads(fn):
        leaves = [t.clone().requires_grad_(n) for t, n in zip(x, needs_grad, strict=True)]
        outs = fn(*leaves, chunk_size=4, self_modifying=True, stop_grad_writes=stop_grad_writes)
        loss = sum(
            (o * c).sum() for o, c, used in zip(outs, cot, outputs_in_loss, strict=True) if used
        )
        return torch.autograd.grad(loss, [t for t in leaves if t.requires_grad], allow_unused=True)

    ours, ref = grads(mlp_memory_triton), grads(mlp_memory_chunk)
    same_none = [a is None for a in ours] == [b is None for b in ref]
    errs = [
        rel_err(a, b) for a, b in zip(ours, ref, strict=True) if a is not None and b is not None
    ]
    return {"n_grads": sum(a is not None for a in ours), "same_none": same_none, "err": max(errs)}


def hope_memory_case():
    """HOPE's MLPMemory with kernels="triton" (the K2 kernel per chunk) vs "reference"."""
    out = {}
    for kernels in ("triton", "reference"):
        memory, state, (k, v, eta, alpha, q) = memory_and_state(InnerRule(momentum=False, kernels=kernels))
        new, o = memory.self_update(state, k, v, eta, alpha, q)
        out[kernels] = (
            o,
            new["s2"],
            new["s1"],
            *torch.autograd.grad(o.sum(), [memory.s2, memory.s1]),
        )
    return {"err": max(rel_err(a, b) for a, b in zip(out["triton"], out["reference"], strict=True))}


def dispatch_case():
    x = random_inputs(T=5, seed=7, dtype=torch.float32)
    kernel = mlp_memory(*x, chunk_size=4, impl="triton")
    os.environ["CLBENCH_KERNELS"] = "triton"
    by_env = mlp_memory(*x, chunk_size=4)
    del os.environ["CLBENCH_KERNELS"]
    return {
        "env_runs_kernel": all(torch.equal(a, b) for a, b in zip(by_env, kernel, strict=True)),
        "resolved_on_cpu": resolve_impl("auto", x[0]),
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    results = {name: forward_case(**case) for name, case in FORWARD_CASES.items()}
    results["non_contiguous"] = non_contiguous_case()
    results["backward_all"] = backward_case((True,) * 7)
    results["backward_some"] = backward_case(
        (True, False, True, True, False, True, False), outputs_in_loss=(True, False, True)
    )
    results["backward_stop_grad"] = backward_case((True,) * 7, stop_grad_writes=True)
    results["hope_memory"] = hope_memory_case()
    results["dispatch"] = dispatch_case()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted():
    from .kernel_testing import run_interpreted  # not at the top: see kernel_testing.py

    return run_interpreted(__file__)


@pytest.mark.parametrize("name", list(FORWARD_CASES))
@pytest.mark.cpu_interpreter
@needs_triton
def test_triton_forward_matches_chunk(interpreted, name):
    r = interpreted[name]
    assert r["all_written"], "some output element kept its NaN poison"
    assert r["guards_intact"], "the kernel stored past the end of an output"
    assert max(r["err"], r["err_branch"]) < TOL, r


@pytest.mark.cpu_interpreter
@needs_triton
def test_triton_non_contiguous_inputs(interpreted):
    r = interpreted["non_contiguous"]
    assert r["inputs_non_contiguous"] and r["err"] < TOL, r


@pytest.mark.parametrize(
    "name,n_grads", [("backward_all", 7), ("backward_some", 4), ("backward_stop_grad", 3)]
)
@pytest.mark.cpu_interpreter
@needs_triton
def test_triton_backward_equals_chunk_autograd(interpreted, name, n_grads):
    r = interpreted[name]
    assert r["n_grads"] == n_grads and r["same_none"], r
    assert r["err"] < 1e-6, r  # the same chunked graph on both sides


@pytest.mark.cpu_interpreter
@needs_triton
def test_hope_mlp_memory_on_the_kernel(interpreted):
    assert interpreted["hope_memory"]["err"] < TOL, interpreted["hope_memory"]


@pytest.mark.cpu_interpreter
@needs_triton
def test_triton_dispatch_under_interpreter(interpreted):
    assert interpreted["dispatch"] == {"env_runs_kernel": True, "resolved_on_cpu": "chunk"}


if __name__ == "__main__":
    main()
