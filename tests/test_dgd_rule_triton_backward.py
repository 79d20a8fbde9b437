"""clbench.kernels.dgd_rule.triton_backward: the Triton backward against autograd of `dgd_rule_chunk`.

Same pattern as test_dgd_rule_triton.py (read its docstring): the kernel checks run once,
in a fresh `python` running this file as a script with TRITON_INTERPRET=1 (`main`), which
prints one JSON line of measurements; the tests assert on them.

Every input gradient (q, k, w, eta, alpha, s0) of the backward kernel is compared with
autograd through the chunked closed form in fp32, relative-norm error < 1e-4 (measured:
about 1e-7). The kernel writes into NaN-poisoned buffers with a NaN guard after each, so
every element must be written and nothing past the end. Cases: chunk sizes 4, 8, 16 with
DGD and read-before-write on and off at T = 21 (a tail in every case), B = H = 1 with
K != V padded widths, one partial chunk, one exact chunk, strong decay, and losses that
use only o or only S_T (the other incoming gradient is None). Through the autograd
Function: gradients of the inputs that do not need one are None, and both backward
flags give the same gradients.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from clbench.kernels.dgd_rule import dgd_rule_chunk
from clbench.kernels.dgd_rule.testing import random_inputs

pytestmark = [
    pytest.mark.cpu_interpreter,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
]

TOL = 1e-4
GUARD = 64  # NaN elements after each gradient buffer: an out-of-bounds store would overwrite them
GRAD_NAMES = ("q", "k", "w", "eta", "alpha", "s0")

# name -> make_inputs overrides and kernel flags. T = 21 is no multiple of any chunk.
BACKWARD_CASES = {
    f"dgd={dgd}-rbw={rbw}-C{c}": {"chunk_size": c, "dgd": dgd, "read_before_write": rbw}
    for dgd in (True, False)
    for rbw in (True, False)
    for c in (4, 8, 16)
}
BACKWARD_CASES.update({
    "B1-H1-K20-V6-C8": {"B": 1, "H": 1, "K": 20, "V": 6, "chunk_size": 8},
    "T3-one-partial-chunk": {"T": 3, "chunk_size": 16, "read_before_write": False},
    "T8-one-exact-chunk": {"T": 8, "chunk_size": 8},
    "strong-decay-alpha>0.05": {"chunk_size": 8, "alpha_low": 0.05},
    "grad-o-only": {"chunk_size": 4, "use": "o"},
    "grad-s-only-no-dgd": {"chunk_size": 8, "dgd": False, "use": "s"},
    "grad-s-only": {"chunk_size": 4, "use": "s"},
})  # fmt: skip


def make_inputs(B=2, T=21, H=2, K=5, V=7, seed=0, alpha_low=0.5):
    return random_inputs(B, T, H, K, V, seed=seed, alpha_low=alpha_low, dtype=torch.float32)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def incoming_grads(x, use, seed):
    g = torch.Generator().manual_seed(seed)
    grad_o = torch.randn(x[2].shape, generator=g) if use in ("both", "o") else None
    grad_s = torch.randn(x[5].shape, generator=g) if use in ("both", "s") else None
    return grad_o, grad_s


def reference_grads(x, grad_o, grad_s, **flags):
    """Autograd through dgd_rule_chunk; an input the loss does not reach gets zeros."""
    inputs = [t.clone().requires_grad_() for t in x]
    o, s = dgd_rule_chunk(*inputs, **flags)
    outputs, grads = zip(
        *[(y, g) for y, g in ((o, grad_o), (s, grad_s)) if g is not None], strict=True
    )
    ref = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    return [torch.zeros_like(t) if r is None else r for t, r in zip(x, ref, strict=True)]


# ---- run in the subprocess, under TRITON_INTERPRET=1 -------------------------------


def backward_case(chunk_size, dgd=True, read_before_write=True, use="both", alpha_low=0.5, **shape):
    from clbench.kernels.dgd_rule.triton import dgd_rule_triton_forward, tiles
    from clbench.kernels.dgd_rule.triton_backward import dgd_rule_triton_backward

    x = make_inputs(**shape, seed=chunk_size, alpha_low=alpha_low)
    grad_o, grad_s = incoming_grads(x, use, seed=chunk_size + 1)
    flags = {"dgd": dgd, "read_before_write": read_before_write, "chunk_size": chunk_size}
    _, _, chunk_states = dgd_rule_triton_forward(*x, **flags, return_chunk_states=True)
    buffers = [torch.full((t.numel() + GUARD,), float("nan")) for t in x]
    out = tuple(buf[: t.numel()].view(t.shape) for buf, t in zip(buffers, x, strict=True))
    dgd_rule_triton_backward(
        x, chunk_states, grad_o, grad_s, dgd=dgd, read_before_write=read_before_write,
        tiles=tiles(chunk_size, x[0].shape[-1], x[2].shape[-1]), out=out,
    )  # fmt: skip
    ref = reference_grads(x, grad_o, grad_s, **flags)
    return {
        "err": {name: rel_err(a, b) for name, a, b in zip(GRAD_NAMES, out, ref, strict=True)},
        "all_written": all(bool(torch.isfinite(t).all()) for t in out),
        "guards_intact": all(bool(buf[-GUARD:].isnan().all()) for buf in buffers),
    }


def autograd_function_case():
    """DGDRuleTriton: None for inputs without grad, both backward flags agree, flag checked."""
    from clbench.kernels.dgd_rule.triton import DGDRuleTriton, dgd_rule_triton

    x = make_inputs(T=13, seed=9)
    needs = (True, False, True, True, False, True)
    grad_o, grad_s = incoming_grads(x, "both", seed=10)

    def grads(backward):
        inputs = [t.clone().requires_grad_(n) for t, n in zip(x, needs, strict=True)]
        o, s = DGDRuleTriton.apply(*inputs, True, False, 4, backward)
        ((o * grad_o).sum() + (s * grad_s).sum()).backward()
        return [t.grad for t in inputs]

    ours, recomputed = grads("triton"), grads("recompute")
    try:
        dgd_rule_triton(*x, backward="autograd")
        bad_flag_error = None
    except ValueError as err:
        bad_flag_error = str(err)
    with torch.no_grad():
        o, _ = dgd_rule_triton(*(t.clone().requires_grad_() for t in x))
    return {
        "none_where_not_needed": [g is None for g in ours] == [not n for n in needs],
        "err_vs_recompute": max(
            rel_err(a, b) for a, b in zip(ours, recomputed, strict=True) if b is not None
        ),
        "bad_flag_error": bad_flag_error,
        "no_grad_output_plain": o.grad_fn is None and not o.requires_grad,
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    results = {name: backward_case(**case) for name, case in BACKWARD_CASES.items()}
    results["autograd_function"] = autograd_function_case()
    print(json.dumps(results))


# ---- tests (in the pytest process) -------------------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    from .kernel_testing import run_interpreted  # not at the top: see kernel_testing.py

    return run_interpreted(__file__)


@pytest.mark.parametrize("name", list(BACKWARD_CASES))
def test_backward_kernel_matches_chunk_autograd(interpreted, name):
    r = interpreted[name]
    assert r["all_written"], "some gradient element kept its NaN poison"
    assert r["guards_intact"], "the kernel stored past the end of a gradient"
    assert max(r["err"].values()) < TOL, r["err"]


def test_autograd_function_with_triton_backward(interpreted):
    r = interpreted["autograd_function"]
    assert r["none_where_not_needed"]
    assert r["err_vs_recompute"] < TOL, r
    assert r["bad_flag_error"] == "backward must be one of 'triton', 'recompute'; got 'autograd'"
    assert r["no_grad_output_plain"]


if __name__ == "__main__":
    main()
