"""What `--log` costs a cell (target: at most 5% slower than without logging).

One quick-profile cell (P-MNIST, naive, as `clbench run --profile quick`; `--set` shortens it)
runs without logging and with each tracker, interleaved round by round in one process, so a
load change on the shared machine hits every configuration alike. Each cell's wall time is
its result's `wall_seconds` (tracker set-up and close included); the ratio to the untracked
cell is taken within each round and the median over rounds is reported. The packages are
imported before the rounds (a process pays that once, not per cell); their import times are
reported on their own.

    CLBENCH_DATA=/path/to/data .venv/bin/python benchmarks/tracking_overhead.py
    .venv/bin/python benchmarks/tracking_overhead.py --rounds 5 --set scenario.n_experiences=5
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run with the installed clbench: `.venv/bin/python benchmarks/<this file>` after `make install`.

TARGET = 1.05
CONFIGS = {"none": (), "tensorboard": ("tensorboard",), "csv": ("csv",), "mlflow": ("mlflow",), "wandb": ("wandb",),
           # the training series as means over 10-iteration windows (`--log NAME:10`)
           "tensorboard:10": ("tensorboard:10",), "mlflow:10": ("mlflow:10",), "wandb:10": ("wandb:10",)}


def children_cpu() -> float:
    """CPU seconds of this process's child processes so far (W&B's service, wandb-core)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def import_seconds(module: str) -> float:
    """A fresh interpreter's import time of the module, less that of the bare interpreter."""
    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return time.perf_counter() - t0

    return min(run(f"import {module}") for _ in range(2)) - min(run("pass") for _ in range(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=HERE / "tracking_overhead.md")
    args = parser.parse_args()

    import torch

    from clbench.config import parse_set_args
    from clbench.resolve import resolve_config
    from clbench.runner import run_cell

    torch.set_num_threads(1)
    os.environ.pop("WANDB_MODE", None)  # offline, the default
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    imports = {m: import_seconds(m) for m in ("wandb", "mlflow")}
    for module in ("tensorboard", "wandb", "mlflow"):
        importlib.import_module(module)
    cfg = resolve_config("pmnist", "naive", seed=0, profile="quick", overrides=parse_set_args(args.sets))
    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cpus: dict[str, list[float]] = {name: [] for name in CONFIGS}
    work: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CONFIGS}
    iterations = None
    with tempfile.TemporaryDirectory(prefix="tracking_overhead_") as tmp:
        run_cell(cfg, Path(tmp) / "warmup", progress=False)  # data cache, allocator
        for r in range(args.rounds):
            names = list(CONFIGS)
            names = names[r % len(names):] + names[:r % len(names)]  # rotate: no config always first
            for name in names:
                service0 = children_cpu()
                result = run_cell(cfg, Path(tmp) / f"{name}{r}", progress=False, tracking=CONFIGS[name])
                assert result["status"] == "ok", result["error"]
                walls[name].append(result["wall_seconds"])
                cpus[name].append(result["cpu_seconds"])
                cost = result.get("tracking_seconds") or {}
                work[name].append((cost.get("training_thread", 0.0), cost.get("feeder_thread_cpu", 0.0),
                                   children_cpu() - service0))
                print(f"round {r} {name:12s} {result['wall_seconds']:.2f} s", flush=True)
            if iterations is None:
                with open(Path(tmp) / f"csv{r}" / "tracking" / "csv" / "pmnist" / "naive" / "seed0" / "metrics.csv") as f:
                    iterations = sum(1 for line in f if ",train/loss," in line)
    load_after = os.getloadavg()

    ratios = {name: [walls[name][r] / walls["none"][r] for r in range(args.rounds)] for name in CONFIGS}
    cpu_ratios = {name: [cpus[name][r] / cpus["none"][r] for r in range(args.rounds)] for name in CONFIGS}
    lines = [
        "# Tracking overhead (`--log`)",
        "",
        f"Made by `benchmarks/tracking_overhead.py --rounds {args.rounds}"
        + "".join(f" --set {s}" for s in args.sets) + f"` on {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{platform.machine()} Linux, Python {platform.python_version()}, torch {torch.__version__}, "
        f"1 intra-op thread, CPU.",
        "",
        f"Cell: P-MNIST, naive, quick profile ({cfg.scenario_args.get('n_experiences')} experiences of "
        f"{cfg.scenario_args.get('train_per_exp')} samples, {cfg.train.epochs} epoch(s), minibatch "
        f"{cfg.train.train_mb_size}: {iterations} training iterations, each logging a loss and a learning "
        f"rate). Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in load_after)} (2 cores, shared).",
        "",
        f"Ratio = the cell's time with the tracker / without, within a round; median over rounds. "
        f"Target: <= {TARGET:.2f}. Wall time is what the target is about, but on a shared machine it "
        f"moves with the other jobs' load; CPU time (this process, all its threads: the tracker's "
        f"writer thread included, W&B's separate service process not) is the steadier measure of the "
        f"work logging adds.",
        "",
        "| tracker | median wall (s) | wall ratio | wall ratio per round | CPU ratio | CPU ratio per round | wall within target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in CONFIGS:
        median = statistics.median(ratios[name])
        lines.append(f"| {name} | {statistics.median(walls[name]):.2f} | {median:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in ratios[name])} | {statistics.median(cpu_ratios[name]):.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in cpu_ratios[name])} | "
                     f"{'-' if name == 'none' else ('yes' if median <= TARGET else 'NO')} |")
    lines += [
        "",
        "Work attributed to logging, per cell (medians over rounds): seconds the training thread spent "
        "in the tracker's calls (opening and closing the loggers included) and CPU seconds of the "
        "tracker's feeder thread, both stored by the cell in result['tracking_seconds']; the cell's extra "
        "process CPU over the untracked cell of the same round (all threads, so also a logger's own "
        "writer thread, e.g. TensorBoard's); and CPU seconds of child processes (W&B's service) "
        "during the cell. Cost = (extra process CPU + service CPU) / the untracked cell's wall time: "
        "the CPU that logging takes from a machine whose cores are all busy (`--jobs` = cores).",
        "",
        "| tracker | training thread (s) | feeder thread CPU (s) | extra process CPU (s) | service CPU (s) | cost | within target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in list(CONFIGS)[1:]:
        inline, thread, service = (statistics.median(w[k] for w in work[name]) for k in range(3))
        extra = statistics.median(cpus[name][r] - cpus["none"][r] for r in range(args.rounds))
        share = statistics.median((cpus[name][r] - cpus["none"][r] + work[name][r][2]) / walls["none"][r]
                                  for r in range(args.rounds))
        lines.append(f"| {name} | {inline:.3f} | {thread:.3f} | {extra:.3f} | {service:.3f} | {share * 100:.1f}% | "
                     f"{'yes' if share <= TARGET - 1 else 'NO'} |")
    lines += [
        "",
        "Imported once per process, before the first cell that logs to it (a fresh interpreter's "
        "import time, not in the ratios): "
        + ", ".join(f"{m} {s:.2f} s" for m, s in imports.items())
        + ". TensorBoard's writer comes with torch.",
        "",
    ]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
