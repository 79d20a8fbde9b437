"""Cost of one step of the deep optimizers against Adam on a ~1M-parameter model (issue 5).

Model: MLP 784-1024-256-10 (1,068,810 parameters), float32, CPU. Two measurements:

- `step`: `optimizer.step()` alone, on fixed random gradients (what the optimizer itself
  costs; DGD is left out because its step needs the inputs of a forward pass);
- `train`: one full training iteration (zero_grad, forward and backward on a batch of 128,
  step), which is what a run pays.

Optimizers are timed round-robin (a few steps of each in turn, repeated) so that load from
other processes hits all of them alike; the figure is the median per step. Target: DMGD step
<= 3x the Adam step (`adam` is clbench's `--set optimizer=adam`, i.e. torch's default
single-tensor loop on CPU; `adam_foreach` is torch's faster multi-tensor path).

    python benchmarks/deep_optimizers.py              # prints, writes benchmarks/deep_optimizers.md
    python benchmarks/deep_optimizers.py --threads 2 --rounds 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
# No sys.path insert of the repo root: it would let `kernels` shadow Hugging Face's (clbench/sys_path_guard.py).
# Run with the installed clbench: `.venv/bin/python benchmarks/<this file>` after `make install`.

from clbench.nested.optim import DGD, DMGD, M3, DeltaMomentum  # noqa: E402

# name -> (factory, steps per round): NS-based and matrix-form optimizers are slow, fewer steps.
OPTIMIZERS = {
    "sgd_momentum": (lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), 4),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-3), 4),
    "adam_foreach": (lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), 4),
    "dmgd_precond": (lambda p: DMGD(p, lr=0.01, objective="precond"), 4),
    "dmgd_l2_recon": (lambda p: DMGD(p, lr=0.01, objective="l2_recon"), 4),
    "dmgd_frozen_memory": (lambda p: DMGD(p, lr=0.01, memory_lr=0.0), 4),
    "delta_momentum_projection": (lambda p: DeltaMomentum(p, lr=0.01, form="projection"), 4),
    "delta_momentum_scalar": (lambda p: DeltaMomentum(p, lr=0.01, form="scalar"), 4),
    "delta_momentum_matrix": (lambda p: DeltaMomentum(p, lr=0.01, form="matrix"), 2),
    "m3": (lambda p: M3(p, lr=1e-3), 1),
    "dgd": (lambda p: DGD(p, lr=0.01), 2),
}
STEP_ONLY_SKIP = {"dgd"}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10))


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench(kind: str, rounds: int) -> dict[str, list[float]]:
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    runs = {}
    for name, (factory, _) in OPTIMIZERS.items():
        if kind == "step" and name in STEP_ONLY_SKIP:
            continue
        model = make_model()
        opt = factory(model.parameters())
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3

        def train_step(model=model, opt=opt):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        fn = opt.step if kind == "step" else train_step
        for _ in range(3):  # warm-up: lazy state, memory creation, allocator
            fn()
        runs[name] = (fn, [])
    for _ in range(rounds):
        for name, (fn, times) in runs.items():
            times.extend(timed(fn, OPTIMIZERS[name][1]))
    return {name: times for name, (_, times) in runs.items()}


def summarize(times: dict[str, list[float]]) -> dict[str, tuple[float, float, float, int]]:
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 4 else [min(ts), statistics.median(ts), max(ts)]
        out[name] = (statistics.median(ts) * 1e3, q[0] * 1e3, q[2] * 1e3, len(ts))
    return out


def table(kind: str, stats: dict) -> list[str]:
    adam = stats["adam"][0]
    lines = [f"| optimizer | {kind} median ms | IQR ms | vs adam | vs adam_foreach | n |", "|---|---:|---:|---:|---:|---:|"]
    for name, (med, lo, hi, n) in stats.items():
        lines.append(f"| {name} | {med:.2f} | {lo:.2f}-{hi:.2f} | {med / adam:.2f}x | "
                     f"{med / stats['adam_foreach'][0]:.2f}x | {n} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: least noise)")
    ap.add_argument("--rounds", type=int, default=12, help="round-robin repetitions")
    ap.add_argument("--out", default=str(HERE / "deep_optimizers.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_params = sum(p.numel() for p in make_model().parameters())
    load_before = os.getloadavg()
    step_stats = summarize(bench("step", args.rounds))
    train_stats = summarize(bench("train", args.rounds))
    load_after = os.getloadavg()
    ratio = step_stats["dmgd_precond"][0] / step_stats["adam"][0]
    verdict = "met" if ratio <= 3 else "NOT met"
    lines = [
        "# Deep optimizers: cost of one step (benchmarks/deep_optimizers.py)",
        "",
        f"- when: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; host {platform.node()}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); torch {torch.__version__}, "
        f"{args.threads} intra-op thread(s)",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)} (other processes share these CPUs)",
        f"- model: MLP 784-1024-256-10, {n_params:,} parameters; train = batch 128 forward + backward + step",
        f"- target DMGD step <= 3x Adam step: {ratio:.2f}x -> {verdict}",
        "",
        *table("step", step_stats),
        "",
        *table("train", train_stats),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    return 0 if ratio <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
