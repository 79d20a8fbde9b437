"""HOPE trained through the Triton kernels (interpreter on CPU) vs through the PyTorch references.

The issue's integration check: a tiny HOPE model trains for a few steps once with
`kernels="triton"` (every memory write runs `clbench.kernels.dgd_rule`'s Triton kernel,
under TRITON_INTERPRET=1 since there is no GPU here) and once with `kernels="reference"`
(the chunked closed form), from the same weights on the same batches. Losses, gradients
and the trained weights must agree to fp32 tolerance: the kernel is a drop-in inside the
model, its forward in the inner loop and its backward in the outer loop.

As in test_dgd_rule_triton.py, the interpreter run happens once in a fresh subprocess
(TRITON_INTERPRET is read when the kernel is decorated); `main` prints one JSON line.
Both memories: linear (kernel K1, `dgd_rule`) and the 2-layer MLP (kernel K2, `mlp_memory`).
The dispatch of the one-chunk op itself is checked in-process.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from clbench.kernels.dgd_rule import dgd_rule_one_chunk, dgd_rule_step
from clbench.kernels.dgd_rule.testing import random_inputs

STEPS = 2
TOL = 1e-4


def head_major(x):
    """random_inputs gives the token-major [B, T, H, *] layout; HOPE works head-major."""
    q, k, w, eta, alpha, s0 = x
    return (*(t.transpose(1, 2).contiguous() for t in (q, k, w, eta, alpha)), s0)


@pytest.mark.parametrize("dgd", [True, False])
def test_one_chunk_step_naive_equals_chunk_in_fp64(dgd):
    x = head_major(random_inputs(2, 7, 3, 5, 4, seed=1, alpha_low=0.5, dtype=torch.float64))
    o_ref, s_ref = dgd_rule_one_chunk(*x, dgd=dgd)
    o, s = dgd_rule_step(*x, dgd=dgd, impl="naive")
    assert torch.allclose(o, o_ref, atol=1e-10) and torch.allclose(s, s_ref, atol=1e-10)
    o_auto, s_auto = dgd_rule_step(*x, dgd=dgd)  # CPU: "auto" is the chunked closed form, bit for bit
    assert torch.equal(o_auto, o_ref) and torch.equal(s_auto, s_ref)


def test_unknown_kernel_choice_is_rejected_with_the_accepted_ones():
    from clbench.nested.hope.titans import TitansOptions

    with pytest.raises(ValueError, match="kernels must be one of 'auto', 'reference', 'triton', got 'cuda'"):
        TitansOptions(kernels="cuda")


# ---- run in the subprocess, under TRITON_INTERPRET=1 -------------------------------


def train(kernels: str, memory: str, state: dict | None):
    """A few SGD steps of a tiny HOPE on fixed random MNIST-shaped batches."""
    from clbench.nested.hope.zoo import build_hope
    from clbench.scenarios.stream import ScenarioInfo

    info = ScenarioInfo("pmnist", "domain_il", 2, 10, (1, 28, 28), [list(range(10))] * 2)
    torch.manual_seed(0)
    # The Triton kernels cover the rule without momentum (the momentum form has only PyTorch paths).
    model = build_hope(info, "smoke", memory=memory, kernels=kernels, momentum=False)
    if state is not None:
        model.load_state_dict(state)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # Plain SGD: the weights move in proportion to the gradients, so fp32 rounding differences
    # stay rounding-sized (Adam divides tiny gradient entries by their own size and can
    # turn a 1e-7 difference into a full step).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    losses, grad_norms = [], []
    for _ in range(STEPS):
        x, y = torch.randn(2, 1, 28, 28, generator=g), torch.randint(0, 10, (2,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        grad_norms.append(float(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()))
        optimizer.step()
        losses.append(loss.item())
    return start, losses, grad_norms, model.state_dict()


def compare(memory: str) -> dict:
    start, ref_losses, ref_grads, ref_end = train("reference", memory, None)
    _, losses, grads, end = train("triton", memory, start)
    rel = [abs(a - b) / abs(b) for a, b in zip(losses + grads, ref_losses + ref_grads, strict=True)]
    weights = max(float((end[k] - ref_end[k]).norm() / ref_end[k].norm().clamp_min(1e-12)) for k in ref_end)
    return {"losses": losses, "ref_losses": ref_losses, "max_rel_loss_grad": max(rel), "max_rel_weights": weights}


def main() -> None:
    from clbench.kernels.dgd_rule.triton import INTERPRETED

    torch.set_num_threads(1)
    print(json.dumps({"interpreted": INTERPRETED, "linear": compare("linear"), "mlp": compare("mlp")}))


@pytest.fixture(scope="module")
def interpreted():
    if importlib.util.find_spec("triton") is None:
        pytest.fail("triton is not installed: it comes with torch and the kernels need it")
    from .kernel_testing import run_interpreted  # not at the top: see kernel_testing.py

    return run_interpreted(__file__, OMP_NUM_THREADS="1")


@pytest.mark.cpu_interpreter
@pytest.mark.parametrize("memory", ["linear", "mlp"])  # K1 (dgd_rule) and K2 (mlp_memory)
def test_hope_trains_the_same_through_the_triton_kernel(interpreted, memory):
    assert interpreted["interpreted"]
    result = interpreted[memory]
    assert result["losses"][0] > 0 and len(result["losses"]) == STEPS
    assert result["max_rel_loss_grad"] < TOL, result
    assert result["max_rel_weights"] < TOL, result


if __name__ == "__main__":
    main()
