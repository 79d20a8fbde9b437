"""Overhead of the CMS multi-rate wrapper per training iteration (target: <= 1.15x plain).

Model: cms_mlp at ~1M parameters (width 256, hidden 512, 3 levels; MNIST input, batch 64).
For each optimizer (SGD, Adam) it times a full training iteration (zero_grad, forward,
backward, step) with the plain torch optimizer over all parameters, then with the wrapper
(a) all periods 1 (pure bookkeeping: must equal the plain step) and (b) periods 1/8/64 plus
the every-iteration outer group (the default CMS setting). It also times the optimizer step
alone on fixed gradients, over a whole multiple of the slowest period so slow-level updates
are counted at their real frequency. Configurations are interleaved round by round; a ratio
is taken within each round (so a load change hits both sides alike) and the median over
rounds is reported. One intra-op thread: on a shared 2-core machine more threads only add
hand-off noise.

    python benchmarks/cms_overhead.py              # prints and writes benchmarks/cms_overhead.md
    python benchmarks/cms_overhead.py --rounds 9   # steadier numbers
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# No sys.path insert of the repo root: it would let `kernels` shadow Hugging Face's (clbench/sys_path_guard.py).
# Run with the installed clbench: `.venv/bin/python benchmarks/<this file>` after `make install`.

import torch  # noqa: E402

from clbench.nested.cms import assign_levels, build_cms_mlp  # noqa: E402
from clbench.nested.multirate import Level, MultiRateOptimizer  # noqa: E402
from clbench.scenarios.stream import ScenarioInfo  # noqa: E402

TARGET = 1.15
PERIODS = [1, 8, 64]
INFO = ScenarioInfo("pmnist", "domain_il", 5, 10, (1, 28, 28), [list(range(10))] * 5)
OPTIMIZERS = {
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
    "adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
}


def make_optimizer(model, name: str, periods: list[int] | None):
    if periods is None:
        return OPTIMIZERS[name](model.parameters(), 1e-3)
    # The plugin's own level assignment (CMS levels + the every-iteration outer group).
    groups, _ = assign_levels(model, len(periods), rule="cms")
    named = dict(model.named_parameters())
    levels = [
        Level(f"level{i}", [named[x] for x in names], periods[i] if i < len(periods) else 1)
        for i, names in enumerate(groups)
    ]
    return MultiRateOptimizer(levels, lambda i, ps, mult: OPTIMIZERS[name](ps, 1e-3 * mult))


def time_iterations(model, opt, x, y, n: int) -> float:
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(n):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / n


def time_steps(model, opt, n: int) -> float:
    grads = [torch.randn_like(p) * 1e-3 for p in model.parameters()]
    start = time.perf_counter()
    for _ in range(n):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g  # a reference, not a copy: only the optimizer's own work is timed
        opt.step()
    return (time.perf_counter() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--iters", type=int, default=128, help="training iterations per round (multiple of 64)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "cms_overhead.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = build_cms_mlp(INFO, "quick", width=256, hidden=512, n_levels=3)
    n_params = sum(p.numel() for p in base.parameters())
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    configs = [
        (o, label, periods)
        for o in OPTIMIZERS
        for label, periods in (
            ("plain", None),
            ("periods 1/1/1", [1, 1, 1]),
            ("periods 1/8/64", PERIODS),
        )
    ]
    runs = {}
    for name, label, periods in configs:
        model = copy.deepcopy(base)
        runs[(name, label)] = (model, make_optimizer(model, name, periods))
    load_before = os.getloadavg()
    it_times = {k: [] for k in runs}
    step_times = {k: [] for k in runs}
    for model, opt in runs.values():  # warm-up: allocate optimizer state and accumulators
        time_iterations(model, opt, x, y, 64)
    for _ in range(args.rounds):
        for key, (model, opt) in runs.items():
            it_times[key].append(time_iterations(model, opt, x, y, args.iters))
            step_times[key].append(time_steps(model, opt, 2 * max(PERIODS)))
    load_after = os.getloadavg()

    rows = []
    ok = True
    for name, label, _ in configs:
        it, st = it_times[(name, label)], step_times[(name, label)]
        it0, st0 = it_times[(name, "plain")], step_times[(name, "plain")]
        ratio = statistics.median(a / b for a, b in zip(it, it0, strict=True))
        step_ratio = statistics.median(a / b for a, b in zip(st, st0, strict=True))
        ok &= ratio <= TARGET
        rows.append(
            f"| {name} | {label} | {statistics.median(it) * 1e3:.2f} | {ratio:.3f}x | "
            f"{statistics.median(st) * 1e3:.3f} | {step_ratio:.3f}x |"
        )
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cpu = platform.processor() or platform.machine()
    lb, la = (" / ".join(f"{v:.1f}" for v in load) for load in (load_before, load_after))
    text = "\n".join(
        [
            "# CMS multi-rate wrapper overhead (benchmarks/cms_overhead.py)",
            "",
            f"{stamp}. Model: cms_mlp width 256, hidden 512, 3 levels = {n_params:,} parameters;",
            f"batch {args.batch}; {args.rounds} interleaved rounds of {args.iters} iterations,",
            f"medians over rounds; torch {torch.__version__}, 1 intra-op thread; {cpu},",
            f"{os.cpu_count()} CPUs. Load average (1/5/15 min): {lb} before, {la} after.",
            "Other jobs share the CPUs, so absolute times are noisy; each ratio is taken",
            "within one round, where the load hits both sides alike.",
            "",
            "Iteration = zero_grad + forward + backward + step. Step = `optimizer.step()` alone",
            f"on fixed gradients, averaged over {2 * max(PERIODS)} steps so every level's updates",
            f"are counted. Target: iteration ratio <= {TARGET}x.",
            "",
            "| optimizer | wrapper | ms / iteration | vs plain | ms / step | vs plain |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Result: {'all iteration ratios within' if ok else 'OVER'} the {TARGET}x target.",
            "",
        ]
    )
    print(text)
    args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
