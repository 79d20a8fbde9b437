"""clbench.kernels.dmgd_mlp (kernel K4): DMGD's memory read and inner gradient.

References against each other in fp64 (the naive row loop writes the gradients out by hand,
chunk takes them from autograd, so they are independent): measured ~1e-16 relative, the
tests allow 1e-10. The Triton kernels run once, in a subprocess under TRITON_INTERPRET=1
(this file as a script, `main` below; why a subprocess: see test_dgd_rule_triton.py),
against chunk in fp32: relative-norm error below 1e-4 (§9.4), measured about 1e-7.
There every torch.empty is NaN-filled (torch.utils.deterministic.fill_uninitialized_memory),
so the partial-sum buffers and outputs the wrappers allocate are poisoned too.
"""

from __future__ import annotations

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import clbench.kernels.dgd_rule as dgd_pkg
from clbench.kernels.dmgd_mlp import (
    OBJECTIVES,
    dmgd_mlp_inner_grad,
    dmgd_mlp_read,
    inner_grad_chunk,
    inner_grad_naive,
    read_chunk,
    read_naive,
    resolve_impl,
)
from clbench.nested.optim import DMGD

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)
interpreter = pytest.mark.cpu_interpreter
TOL = 1e-4
GUARD = 64  # NaN elements after the read's output: an out-of-bounds store would overwrite them

# (N, d, h, row_tile): N not a multiple of the tile, N = 1, d and h not powers of two,
# d = 2 / h = 1 (the smallest DMGD allows), one power-of-two case.
SHAPES = [(37, 7, 5, 8), (1, 7, 5, 8), (20, 2, 1, 4), (48, 32, 8, 16)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make_inputs(n, d, h, *, seed=0, dtype=torch.float32):
    """(x, target, v, u): rows of uneven scale, one zero row, memory as DMGD trains it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) * torch.rand(n, 1, generator=g, dtype=dtype)
    target = torch.randn(n, d, generator=g, dtype=dtype)
    if n > 2:
        x[2] = 0  # zero token (the padding of a short last slice can be all zero)
    v = torch.randn(h, d, generator=g, dtype=dtype) / d**0.5
    u = torch.randn(d, h, generator=g, dtype=dtype) / 3
    return x, target, v, u


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def dmgd_run(impl, objective, dtype=torch.float32, steps=4):
    """Parameters and memory after a few DMGD steps (token_dim 5: padded last tokens)."""
    model = tiny_model(dtype=dtype)
    opt = DMGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, objective=objective,
               token_dim=5, hidden=3, memory_lr=0.5, memory_tokens=23, impl=impl)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 12, generator=g, dtype=dtype), torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()] + [opt.memory["V"], opt.memory["U"]]


# ---- run in the subprocess, under TRITON_INTERPRET=1 -------------------------------


def read_case(n, d, h, row_tile):
    from clbench.kernels.dmgd_mlp.triton import read_triton_forward

    x, _, v, u = make_inputs(n, d, h, seed=n)
    buffer = torch.full((n * d + GUARD,), float("nan"))
    out = buffer[: n * d].view(n, d)
    read_triton_forward(x, v, u, out=out, row_tile=row_tile)
    again = read_triton_forward(x, v, u, row_tile=row_tile)
    return {
        "err": rel_err(out, read_chunk(x, v, u)),
        "all_written": bool(torch.isfinite(out).all()),
        "guard_intact": bool(buffer[n * d :].isnan().all()),
        "deterministic": bool(torch.equal(out, again)),
    }


def grad_case(objective, n, d, h, row_tile, max_programs):
    from clbench.kernels.dmgd_mlp.triton import inner_grad_triton

    x, target, v, u = make_inputs(n, d, h, seed=n + d)
    run = lambda: inner_grad_triton(  # noqa: E731
        objective, x, v, u, target, row_tile=row_tile, max_programs=max_programs
    )
    ours, again = run(), run()
    ref = inner_grad_chunk(objective, x, v, u, target)
    return {
        "errs": [rel_err(a, b) for a, b in zip(ours, ref, strict=True)],
        "finite": all(bool(torch.isfinite(t).all()) for t in ours),
        "deterministic": all(torch.equal(a, b) for a, b in zip(ours, again, strict=True)),
    }


def zero_rows_case():
    """precond on all-zero rows: s = 0, loss and gradients exactly zero (as chunk)."""
    from clbench.kernels.dmgd_mlp.triton import inner_grad_triton

    _, _, v, u = make_inputs(5, 6, 3)
    loss, grad_v, grad_u = inner_grad_triton("precond", torch.zeros(9, 6), v, u, None, row_tile=4)
    return float(loss.abs() + grad_v.abs().sum() + grad_u.abs().sum())


def autograd_case():
    """Gradients through ReadTriton (backward recomputes through read_chunk) vs chunk."""
    x, _, v, u = make_inputs(13, 6, 4, seed=5)
    weights = torch.randn(13, 6, generator=torch.Generator().manual_seed(6))

    def grads(impl):
        leaves = [t.clone().requires_grad_() for t in (x, v, u)]
        (dmgd_mlp_read(*leaves, impl=impl) * weights).sum().backward()
        return [t.grad for t in leaves]

    return max(rel_err(a, b) for a, b in zip(grads("triton"), grads("chunk"), strict=True))


def non_contiguous_case():
    x, _, v, u = make_inputs(11, 6, 4, seed=7)
    xt, vt, ut = x.T.contiguous().T, v.T.contiguous().T, u.T.contiguous().T
    assert not any(t.is_contiguous() for t in (xt, vt, ut))
    loss, grad_v, grad_u = dmgd_mlp_inner_grad(xt, vt, ut, objective="precond", impl="triton")
    ref = inner_grad_chunk("precond", x, v, u, None)
    errs = [rel_err(dmgd_mlp_read(xt, vt, ut, impl="triton"), read_chunk(x, v, u))]
    return max(errs + [rel_err(a, b) for a, b in zip((loss, grad_v, grad_u), ref, strict=True)])


def dispatch_case():
    x, _, v, u = make_inputs(9, 6, 4)
    wide = torch.zeros(3, 65)  # d = 65 > MAX_D
    os.environ["CLBENCH_KERNELS"] = "triton"
    by_env = (resolve_impl("auto", x, 4), resolve_impl("auto", wide, 4))
    env_read = dmgd_mlp_read(x, v, u)
    del os.environ["CLBENCH_KERNELS"]
    return {
        "by_env": list(by_env),
        "env_runs_kernel": bool(torch.equal(env_read, dmgd_mlp_read(x, v, u, impl="triton"))),
        "on_cpu": resolve_impl("auto", x, 4),
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # torch.empty -> NaN
    results = {f"read-{shape}": read_case(*shape) for shape in SHAPES}
    for objective in OBJECTIVES:
        for shape in SHAPES:
            results[f"grad-{objective}-{shape}"] = grad_case(objective, *shape, max_programs=512)
        # 3 programs over 10 tiles: 4 tiles each, the last past N (fully masked)
        results[f"grad-{objective}-multi-tile"] = grad_case(objective, 37, 7, 5, 4, 3)
        results[f"dmgd-{objective}"] = max(
            rel_err(a, b)
            for a, b in zip(
                dmgd_run("triton", objective), dmgd_run("chunk", objective), strict=True
            )
        )
    results["zero_rows"] = zero_rows_case()
    results["autograd"] = autograd_case()
    results["non_contiguous"] = non_contiguous_case()
    results["dispatch"] = dispatch_case()
    print(json.dumps(results))


# ---- references and dispatch, in process ---------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_references_agree_fp64(shape):
    n, d, h, _ = shape
    x, target, v, u = make_inputs(n, d, h, dtype=torch.float64)
    assert rel_err(read_naive(x, v, u), read_chunk(x, v, u)) < 1e-12
    for objective in OBJECTIVES:
        naive = inner_grad_naive(objective, x, v, u, target)
        chunk = inner_grad_chunk(objective, x, v, u, target)
        assert max(rel_err(a, b) for a, b in zip(naive, chunk, strict=True)) < 1e-10, objective


def test_precond_on_zero_rows_is_zero_in_every_reference():
    _, _, v, u = make_inputs(5, 6, 3, dtype=torch.float64)
    for impl in ("naive", "chunk"):
        loss, grad_v, grad_u = dmgd_mlp_inner_grad(
            torch.zeros(4, 6, dtype=torch.float64), v, u, objective="precond", impl=impl
        )
        assert loss == 0 and not grad_v.any() and not grad_u.any(), impl


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_dmgd_on_naive_equals_dmgd_on_chunk_fp64(objective):
    ours = dmgd_run("naive", objective, dtype=torch.float64)
    ref = dmgd_run("chunk", objective, dtype=torch.float64)
    assert max(rel_err(a, b) for a, b in zip(ours, ref, strict=True)) < 1e-10
    assert ref[-1].abs().sum() > 0  # the memory learned something: the write was exercised


def test_resolve_impl_rules(monkeypatch):
    cpu = torch.zeros(2, 32)

    def gpu(d=32, dtype=torch.float32):  # only these fields are read
        return SimpleNamespace(is_cuda=True, dtype=dtype, shape=(2, d))

    monkeypatch.delenv("CLBENCH_KERNELS", raising=False)
    if importlib.util.find_spec("triton") is not None:
        assert resolve_impl("auto", gpu(), 8) == "triton"
        assert resolve_impl("auto", gpu(d=64), 32) == "triton"  # the largest tiles taken
    assert resolve_impl("auto", cpu, 8) == "chunk"
    assert resolve_impl("auto", gpu(dtype=torch.float16), 8) == "chunk"  # fp32-only kernels
    assert resolve_impl("auto", gpu(dtype=torch.float64), 8) == "chunk"
    assert resolve_impl("auto", gpu(d=65), 8) == "chunk"  # beyond the register tiles
    assert resolve_impl("auto", gpu(), 33) == "chunk"
    assert resolve_impl("naive", gpu(), 8) == "naive"
    monkeypatch.setattr(dgd_pkg, "_triton_installed", lambda: False)
    assert resolve_impl("auto", gpu(), 8) == "chunk"
    monkeypatch.setenv("CLBENCH_KERNELS", "reference")
    assert resolve_impl("auto", cpu, 8) == "chunk"
    with pytest.raises(ValueError, match=r"impl must be one of 'auto', 'naive', 'chunk', 'triton'"):
        resolve_impl("cuda", cpu, 8)


def test_clear_errors():
    x, target, v, u = make_inputs(4, 6, 3)
    with pytest.raises(
        ValueError, match=r"objective='dot' is not accepted; accepted: precond, l2_recon"
    ):
        dmgd_mlp_inner_grad(x, v, u, objective="dot")
    with pytest.raises(ValueError, match=r"objective='l2_recon' needs a target"):
        dmgd_mlp_inner_grad(x, v, u, objective="l2_recon")
    with pytest.raises(ValueError, match=r"u must have shape \(6, 3\) .*; got \(3, 6\)"):
        dmgd_mlp_read(x, v, u.T)
    with pytest.raises(ValueError, match=r"target must have shape \(4, 6\)"):
        dmgd_mlp_inner_grad(x, v, u, objective="l2_recon", target=target[:3])
    with pytest.raises(ValueError, match=r"v has dtype torch.float64 .* expected torch.float32"):
        dmgd_mlp_read(x, v.double(), u)
    with pytest.raises(ValueError, match=r"needs at least one row"):
        dmgd_mlp_inner_grad(x[:0], v, u, objective="precond")
    with pytest.raises(ValueError, match=r"impl must be one of"):
        DMGD(tiny_model().parameters(), impl="cuda")


@needs_triton
def test_triton_refuses_what_it_cannot_run():
    from clbench.kernels.dmgd_mlp import triton as kernel_module

    x, _, v, u = make_inputs(4, 6, 3)
    with pytest.raises(ValueError, match=r"float32 only; got torch.float64 \(d=6, h=3"):
        dmgd_mlp_read(x.double(), v.double(), u.double(), impl="triton")
    wide = make_inputs(4, 65, 3)
    with pytest.raises(ValueError, match=r"take d <= 64 and h <= 32 .*\(d=65, h=3"):
        dmgd_mlp_inner_grad(wide[0], *wide[2:], objective="precond", impl="triton")
    if kernel_module.INTERPRETED:  # this pytest process itself runs under the interpreter
        return
    with pytest.raises(RuntimeError, match=r"need CUDA tensors, or TRITON_INTERPRET=1"):
        dmgd_mlp_read(x, v, u, impl="triton")


@needs_triton
def test_kernels_compile_for_sm90():
    """Compile every kernel to a Hopper cubin (no GPU needed: Triton ships ptxas), at DMGD's
    default sizes (d = 32, h = 8 -> 16)."""
    from clbench.kernels.dmgd_mlp import triton as km

    from .kernel_testing import compile_for_sm90

    if km.INTERPRETED:
        pytest.skip("TRITON_INTERPRET was set when the kernel module was imported")
    tiles = {"BN": 64, "BD": 32, "BH": 16}
    kernels = [
        (km._read_kernel, "x v u y", tiles),
        (km._grad_partials_kernel, "x target v u m partials", {"RECON": True, **tiles}),
        (km._grad_partials_kernel, "x target v u m partials", {"RECON": False, **tiles}),
        (km._gram_partials_kernel, "x v u partials", tiles),
        (km._sum_partials_kernel, "partials out", {"BK": 1024}),
    ]
    for kernel, pointers, constants in kernels:
        signature = {n: "*fp32" if n in pointers.split() else "i32" for n in kernel.arg_names}
        signature |= {"scale": "fp32"} if "scale" in signature else {}
        assert compile_for_sm90(kernel, signature, constants, num_warps=km.NUM_WARPS)


# ---- interpreter tests (in the pytest process) --------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    from .kernel_testing import run_interpreted  # not at the top: see kernel_testing.py

    return run_interpreted(__file__, OMP_NUM_THREADS="1")


@interpreter
@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_read_matches_chunk(interpreted, shape):
    r = interpreted[f"read-{shape}"]
    assert r["all_written"], "some output element kept its NaN poison"
    assert r["guard_intact"], "the kernel stored past the end of the output"
    assert r["deterministic"]
    assert r["err"] < TOL, r


@interpreter
@needs_triton
@pytest.mark.parametrize("case", [str(s) for s in SHAPES] + ["multi-tile"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_triton_inner_grad_matches_chunk(interpreted, objective, case):
    r = interpreted[f"grad-{objective}-{case}"]
    assert r["finite"], "a NaN-poisoned partial sum or output was read back"
    assert r["deterministic"], "two runs differ: the reduction is not deterministic"
    assert max(r["errs"]) < TOL, r  # loss, ∇v, ∇u


@interpreter
@needs_triton
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_dmgd_on_triton_equals_dmgd_on_chunk(interpreted, objective):
    assert interpreted[f"dmgd-{objective}"] < TOL  # params, V, U after 4 steps


@interpreter
@needs_triton
def test_triton_edge_cases(interpreted):
    assert interpreted["zero_rows"] == 0.0
    assert interpreted["autograd"] < 1e-6  # the same chunk graph on both sides
    assert interpreted["non_contiguous"] < TOL
    assert interpreted["dispatch"] == {
        "by_env": ["triton", "chunk"],
        "env_runs_kernel": True,
        "on_cpu": "chunk",
    }


if __name__ == "__main__":
    main()
