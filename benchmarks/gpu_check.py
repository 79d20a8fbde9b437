"""The prepared GPU check of issue 7: every Triton kernel against its PyTorch reference.

One line per check, and `gpu_check.json` (all numbers, rewritten after every check so a
run cut short still leaves what it measured) in --out; exit code 1 if any check fails.
Each check compares the Triton path with the PyTorch reference on the same device, in fp32,
by the relative-norm error max over its outputs (and input gradients), tolerance 1e-4.

- K1 `dgd_rule`: forward and the Triton backward vs autograd through `dgd_rule_chunk`
  (all six input gradients), DGD and read-before-write on/off, chunks 16 and 64, T no
  multiple of the chunk; `dgd_rule_step` (HOPE's one-chunk head-major entry), forward.
- K2 `mlp_memory`: impl="triton" vs "chunk", outputs and all seven input gradients.
- K3 `cms_step`: FlatLevel stepped by the kernel vs the foreach reference, SGD+momentum
  and AdamW, accumulate and due steps (mean and sum).
- K4 `dmgd_mlp`: the read and the inner gradient of both write objectives.
- HOPE: a tiny `build_hope` model (linear and MLP memory) trained 2 SGD steps with
  kernels="triton" and with kernels="reference": losses, gradient norms and weights.

Shapes: "small" (odd sizes, padding and partial chunks) always; "realistic" (the
benchmark sizes) with --device cuda only. The timing half of the GPU work is
benchmarks/kernels.py; benchmarks/gpu_check.sh runs both on the device machine.

    bash benchmarks/gpu_check.sh                                       # device machine
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check

--device cpu runs the kernels under Triton's interpreter (TRITON_INTERPRET=1 must be set
before Python starts: Triton reads it when a kernel is decorated), small shapes only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from clbench.kernels.cms_step import FlatLevel, Rule, cms_step
from clbench.kernels.dgd_rule import dgd_rule_chunk, dgd_rule_step
from clbench.kernels.dgd_rule.testing import random_inputs as k1_inputs
from clbench.kernels.dmgd_mlp import OBJECTIVES, dmgd_mlp_inner_grad, dmgd_mlp_read
from clbench.kernels.mlp_memory import mlp_memory
from clbench.kernels.mlp_memory.testing import random_inputs as k2_inputs

TOL = 1e-4  # fp32 kernel vs fp32 reference, "ieee" dots (nested_learning.md §9.4)

K1_FLAGS = [(dgd, rbw) for dgd in (True, False) for rbw in (True, False)]
K1_SHAPES = {"small": (2, 37, 2, 5, 7), "realistic": (4, 1000, 8, 64, 64)}  # B, T, H, K, V
K1_CASES = {
    "small": [(c, dgd, rbw) for c in (16, 64) for dgd, rbw in K1_FLAGS],
    # A 64-token tile at K = V = 64 took ~30 s (forward) + ~45 s (backward) to compile for
    # sm_90 on this project's busy 2-core CPU machine: once, with HOPE's default flags.
    "realistic": [(16, dgd, rbw) for dgd, rbw in K1_FLAGS] + [(64, True, True)],
}
K1_STEP_CASES = {  # (B, H, C, K, V) for dgd_rule_step; HOPE's chunk_mem is 8 (a 16 tile)
    "small": [(2, 2, 16, 5, 7), (2, 2, 64, 5, 7), (1, 1, 9, 5, 7)],
    "realistic": [(8, 8, 16, 64, 64)],
}
K2_FLAGS = [(dgd, sm) for dgd in (True, False) for sm in (True, False)]
K2_CASES = {  # (B, G, T, d, h), chunk, dgd, self_modifying; the chunk is semantic here
    "small": [((2, 2, 37, 5, 12), c, dgd, sm) for c in (5, 16) for dgd, sm in K2_FLAGS],
    # the benchmark's memory; a 64-token chunk at d = 64, h = 128 compiles for minutes
    "realistic": [((8, 8, 1000, 64, 128), 16, True, True)],
}
K3_RULES = {
    "sgd+momentum": Rule("sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
    "adamw": Rule("adamw", lr=1e-3, weight_decay=1e-2),
}
K3_SHAPES = {
    "small": [(37, 29), (700,), (3, 7, 23)],  # 2,256 elements: blocks of 1024, the last partial
    "realistic": [(4096, 1024), (4096,), (1024, 4096), (1024,)],  # one MLP block, 8.4M
}
# (due, inv_count) per step: period 3 with the mean (the second chunk cut short at 2, as
# MultiRateOptimizer flushes at the end), then period 1 with the sum
K3_SCHEDULE = [(False, 1.0), (False, 1.0), (True, 1 / 3), (False, 1.0), (True, 1 / 2)]
K3_SCHEDULE += [(True, 1.0), (True, 1.0)]
K4_CASES = {  # (N, d, h): rows, token width, memory width
    "small": [(37, 7, 5), (1, 7, 5), (48, 32, 8)],
    "realistic": [(1024, 64, 16), (156_250, 64, 16)],  # one write; all tokens of 10M params
}
HOPE_MEMORIES = ("linear", "mlp")  # K1 and K2 inside the model
HOPE_STEPS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    args = parser.parse_args()
    check_environment(args.device)
    start = time.perf_counter()
    report = Report(args.out / "gpu_check.json", describe(args.device))
    prepare_torch()
    device = torch.device(args.device)
    run_shapes(report, device, "small")
    for memory in HOPE_MEMORIES:
        label = f"smoke memory={memory} {HOPE_STEPS} SGD steps"
        report.run("hope", label, hope_training, device, report, memory)
    if args.device == "cuda":
        run_shapes(report, device, "realistic")
    else:
        report.note("realistic shapes skipped: --device cpu runs the small shapes only")
    report.finish(time.perf_counter() - start)
    sys.exit(0 if report.all_ok else 1)


def run_shapes(report: Report, device: torch.device, s: str) -> None:
    """Every kernel at one scale s; cheapest compiles first, so a run cut short by its time
    limit still has most checks (K1's 64-token tiles compile longest)."""
    for name, rule in K3_RULES.items():
        for bind in (False, True) if s == "small" else (True,):
            label = f"{s} {name} bind={int(bind)}"
            report.run("k3", label, k3_level, device, K3_SHAPES[s], rule, bind)
    for shape in K4_CASES[s]:
        report.run("k4", f"{s} N,d,h={shape}", k4_memory, device, shape)
    for shape in K1_STEP_CASES[s]:
        for dgd in (True, False):
            label = f"{s} B,H,C,K,V={shape} dgd={int(dgd)}"
            report.run("k1.step", label, k1_step, device, shape, dgd)
    for shape, chunk, dgd, sm in K2_CASES[s]:
        label = f"{s} B,G,T,d,h={shape} C{chunk} dgd={int(dgd)} sm={int(sm)}"
        report.run("k2", label, k2_memory, device, shape, chunk, dgd, sm)
    for chunk, dgd, rbw in K1_CASES[s]:
        label = f"{s} B,T,H,K,V={K1_SHAPES[s]} C{chunk} dgd={int(dgd)} rbw={int(rbw)}"
        report.run("k1", label, k1_rule, device, K1_SHAPES[s], chunk, dgd, rbw)


def check_environment(device: str) -> None:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device == "cpu" and not interpreted:
        sys.exit("--device cpu needs TRITON_INTERPRET=1 in the environment before Python starts")
    if device == "cuda" and interpreted:
        sys.exit("--device cuda must run compiled kernels: unset TRITON_INTERPRET")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU (--device cpu runs the interpreter)")


def describe(device: str) -> dict:
    import triton

    on_gpu = device == "cuda"
    return {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu, Triton interpreter",
        "mode": device,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "tol": TOL,
    }


def prepare_torch() -> None:
    """fp32 references without TF32, and NaN in every torch.empty: an output element a kernel
    never writes then shows up as a NaN error instead of passing on leftover memory."""
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS under determinism
    torch.use_deterministic_algorithms(True, warn_only=True)  # needed by the NaN fill below
    torch.utils.deterministic.fill_uninitialized_memory = True
    warnings.filterwarnings("ignore", message=".*deterministic.*")


class Report:
    """Prints one line per check and keeps gpu_check.json up to date."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data = {**meta, "checks": [], "notes": [], "total_seconds": None, "all_ok": None}
        path.parent.mkdir(parents=True, exist_ok=True)
        print(" | ".join(f"{k} {v}" for k, v in meta.items()), flush=True)

    def run(self, group: str, label: str, fn, *args) -> None:
        """Run one case; fn returns {check suffix: {output name: error}}. An exception is
        recorded as a failed check and the run goes on."""
        start = time.perf_counter()
        try:
            results = fn(*args)
            synchronize()
        except Exception as err:  # report and continue: one broken kernel must not hide the rest
            traceback.print_exc()
            self.add(
                {"name": group, "case": label, "ok": False, "error": f"{type(err).__name__}: {err}"}
            )
            return
        seconds = time.perf_counter() - start
        for suffix, errs in results.items():
            err = worst(errs.values())
            self.add({
                "name": f"{group}.{suffix}", "case": label, "ok": err < TOL, "err": err,
                "errs": errs, "case_seconds": round(seconds, 3),
            })  # fmt: skip

    def add(self, check: dict) -> None:
        self.data["checks"].append(check)
        status = "ok  " if check["ok"] else "FAIL"
        if "error" in check:
            print(f"{status} {check['name']:<16} {check['case']}: {check['error']}", flush=True)
        else:
            print(
                f"{status} {check['name']:<16} {check['case']:<50} err {check['err']:.1e}"
                f"  ({check['case_seconds']:.1f} s)",
                flush=True,
            )
        self.save()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"note {text}", flush=True)
        self.save()

    @property
    def all_ok(self) -> bool:
        return all(c["ok"] for c in self.data["checks"])

    def finish(self, seconds: float) -> None:
        self.data["total_seconds"] = round(seconds, 1)
        self.data["all_ok"] = self.all_ok
        self.save()
        failed = sum(not c["ok"] for c in self.data["checks"])
        print(f"{len(self.data['checks'])} checks, {failed} failed, max err "
              f"{worst(c.get('err', math.nan) for c in self.data['checks']):.1e}, "
              f"total {seconds:.1f} s -> {self.path}", flush=True)  # fmt: skip

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def worst(errs) -> float:
    """Max error, NaN if any is NaN (Python's max would skip a NaN depending on order)."""
    errs = list(errs)
    return math.nan if any(math.isnan(e) for e in errs) else max(errs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def cotangents(tensors, device, seed) -> list[torch.Tensor]:
    """Random incoming gradients shaped like `tensors` (drawn on the CPU: reproducible)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g).to(device) for t in tensors]


def outputs_and_grads(fn, inputs, cot) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """fn's outputs and the gradients of sum(output * cotangent) w.r.t. every input."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    outputs = fn(*leaves)
    loss = sum((y * c).sum() for y, c in zip(outputs, cot, strict=True))
    return [y.detach() for y in outputs], torch.autograd.grad(loss, leaves)


def named_errs(names, ours, ref) -> dict[str, float]:
    return {n: rel_err(a, b) for n, a, b in zip(names, ours, ref, strict=True)}


# ---- K1 ------------------------------------------------------------------------------


def k1_rule(device, shape, chunk, dgd, rbw) -> dict:
    from clbench.kernels.dgd_rule.triton import dgd_rule_triton  # after TRITON_INTERPRET is read

    x = k1_inputs(*shape, seed=chunk, dtype=torch.float32, device=device)
    flags = {"dgd": dgd, "read_before_write": rbw, "chunk_size": chunk}
    cot = cotangents((x[2], x[5]), device, seed=chunk + 1)  # shaped like o [B,T,H,V] and S_T
    ours = outputs_and_grads(lambda *a: dgd_rule_triton(*a, **flags, backward="triton"), x, cot)
    ref = outputs_and_grads(lambda *a: dgd_rule_chunk(*a, **flags), x, cot)
    return {
        "forward": named_errs(("o", "state"), ours[0], ref[0]),
        "backward": named_errs(("dq", "dk", "dw", "deta", "dalpha", "ds0"), ours[1], ref[1]),
    }


def k1_step(device, shape, dgd) -> dict:
    B, H, C, K, V = shape
    q, k, w, eta, alpha, s0 = k1_inputs(B, C, H, K, V, seed=C, dtype=torch.float32, device=device)
    head_major = [t.transpose(1, 2).contiguous() for t in (q, k, w, eta, alpha)]  # HOPE's layout
    ours = dgd_rule_step(*head_major, s0, dgd=dgd, impl="triton")
    ref = dgd_rule_step(*head_major, s0, dgd=dgd, impl="chunk")
    return {"forward": named_errs(("o", "state"), ours, ref)}


# ---- K2 ------------------------------------------------------------------------------


def k2_memory(device, shape, chunk, dgd, sm) -> dict:
    x = k2_inputs(*shape, seed=chunk, dtype=torch.float32, device=device)
    flags = {"chunk_size": chunk, "dgd": dgd, "self_modifying": sm}
    cot = cotangents((x[0], x[5], x[6]), device, seed=chunk + 1)  # o, S2 and S1 after
    ours = outputs_and_grads(lambda *a: mlp_memory(*a, **flags, impl="triton"), x, cot)
    ref = outputs_and_grads(lambda *a: mlp_memory(*a, **flags, impl="chunk"), x, cot)
    grads = ("dq", "dk", "dv", "deta", "dalpha", "ds2", "ds1")
    return {
        "forward": named_errs(("o", "s2", "s1"), ours[0], ref[0]),
        "backward": named_errs(grads, ours[1], ref[1]),
    }


# ---- K3 ------------------------------------------------------------------------------


def k3_level(device, shapes, rule, bind) -> dict:
    """A level stepped by the kernel vs by the foreach reference from the same start; the
    error is the worst over all steps of parameters, accumulator and optimizer state."""
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g).to(device) for s in shapes]
    ours = FlatLevel([p.clone() for p in init], rule, bind=bind)
    ref = FlatLevel([p.clone() for p in init], rule)
    errs: dict[str, float] = {}
    for step, (due, inv_count) in enumerate(K3_SCHEDULE):
        grads = [torch.randn(s, generator=g).to(device) for s in shapes]
        ran = cms_step(ours, grads, due=due, inv_count=inv_count, impl="triton")
        if ran != "triton":
            raise RuntimeError(f"step {step} ran {ran!r}, not the kernel")
        cms_step(ref, grads, due=due, inv_count=inv_count, impl="chunk")
        pairs = {"params": (torch.cat([p.reshape(-1) for p in lvl.params]) for lvl in (ours, ref))}
        pairs["acc"] = (ours.acc, ref.acc)
        pairs |= {name: (ours.state[name], ref.state[name]) for name in ref.state}
        for name, (a, b) in pairs.items():  # acc is 0 after a due step: rel_err is then |a|/1e-30
            errs[name] = worst([errs.get(name, 0.0), rel_err(a, b)])
    return {"steps": errs}


# ---- K4 ------------------------------------------------------------------------------


def k4_rows(n, d, h, device, seed=0):
    """(x, target, v, u): gradient tokens of uneven scale with one zero row, a memory of
    DMGD's scale (the rows DMGD feeds its memory are raw gradient slices)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g)
    if n > 2:
        x[2] = 0  # a zero token (the padding of a short last slice is all zero)
    target = torch.randn(n, d, generator=g)
    v, u = torch.randn(h, d, generator=g) / d**0.5, torch.randn(d, h, generator=g) / 3
    return [t.to(device) for t in (x, target, v, u)]


def k4_memory(device, shape) -> dict:
    x, target, v, u = k4_rows(*shape, device)
    reads = [dmgd_mlp_read(x, v, u, impl=impl) for impl in ("triton", "chunk")]
    results = {"read": named_errs(("y",), *([y] for y in reads))}
    for objective in OBJECTIVES:
        runs = [
            dmgd_mlp_inner_grad(x, v, u, objective=objective, target=target, impl=impl)
            for impl in ("triton", "chunk")
        ]
        results[f"grad.{objective}"] = named_errs(("loss", "grad_v", "grad_u"), *runs)
    return results


# ---- HOPE end to end -----------------------------------------------------------------


def import_hope_builder(report: Report):
    """`build_hope`, whose package (clbench.nested) imports three Avalanche names at import
    time. The device image has no Avalanche (and importing it needs wandb, pydantic, ...:
    not carried). Then import-only placeholders stand in for those names; each raises if
    instantiated, so a model that used one would fail the check, not pass on a stand-in.
    HOPE's domain-IL model here has one head and uses none of them."""
    try:
        import avalanche  # noqa: F401  (the placeholders too, once installed)
    except ModuleNotFoundError:
        names = {
            "avalanche.models": ["MultiTaskModule"],
            "avalanche.models.slim_resnet18": ["SlimResNet18"],
            "avalanche.core": ["SupervisedPlugin"],
        }
        for module_name, classes in {"avalanche": [], **names}.items():
            module = types.ModuleType(module_name)
            for cls_name in classes:
                setattr(module, cls_name, type(cls_name, (torch.nn.Module,), {"__init__": _refuse}))
            sys.modules[module_name] = module
        placeholders = ", ".join(f"{m}.{c}" for m, classes in names.items() for c in classes)
        report.note(f"avalanche not installed: import-only placeholders for {placeholders}")
    from clbench.nested.hope.zoo import build_hope

    return build_hope


def _refuse(self, *args, **kwargs):
    raise RuntimeError(f"{type(self).__name__}: gpu_check.py's Avalanche placeholder was used")


def hope_training(device, report, memory) -> dict:
    build_hope = import_hope_builder(report)
    start, ref = train_hope(build_hope, device, memory, "reference", None)
    _, ours = train_hope(build_hope, device, memory, "triton", start)
    errs = {}
    for key in ("losses", "grad_norms"):  # per step
        for i, (a, b) in enumerate(zip(ours[key], ref[key], strict=True)):
            errs[f"{key}[{i}]"] = abs(a - b) / abs(b)
    errs["weights"] = worst(rel_err(ours["weights"][k], w) for k, w in ref["weights"].items())
    return {"train": errs}


def train_hope(build_hope, device, memory, kernels, state):
    """HOPE_STEPS plain-SGD steps of the smoke-profile HOPE on fixed MNIST-shaped batches
    (SGD, not Adam: Adam would blow fp32 rounding in near-zero gradients up to full steps)."""
    info = SimpleNamespace(  # the ScenarioInfo fields the model reads (pmnist, domain-IL)
        name="pmnist", scenario_type="domain_il", n_experiences=2, n_classes=10,
        input_shape=(1, 28, 28), classes_per_exp=[list(range(10))] * 2, metric_name="accuracy",
        extra={}, task_labels=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_hope(info, "smoke", memory=memory, kernels=kernels)
    if state is not None:
        model.load_state_dict(state)
    model.to(device)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    losses, grad_norms = [], []
    for _ in range(HOPE_STEPS):
        x, y = torch.randn(2, 1, 28, 28, generator=g), torch.randint(0, 10, (2,), generator=g)
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        grad_norms.append(float(torch.cat(grads).norm()))
        optimizer.step()
        losses.append(loss.item())
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return start, {"losses": losses, "grad_norms": grad_norms, "weights": weights}


if __name__ == "__main__":
    main()
