"""Cost of anytime evaluation (train.eval_every) on a quick-profile cell (target: <= 1.20x).

Runs the quick Permuted MNIST cell of suites/stability_gap.toml (10 x 5000 training images,
minibatch 32, 1563 iterations) with naive fine-tuning, once without the curve and once with
it for each setting below, interleaved round by round in this one process; a ratio of cell
wall times is taken within each round (a load change hits both sides alike) and the median
over rounds is reported, with the median share of the cell spent in the curve itself.
One intra-op thread: on a shared 2-core machine more threads only add hand-off noise.

    .venv/bin/python benchmarks/anytime_overhead.py             # writes benchmarks/anytime_overhead.md
    .venv/bin/python benchmarks/anytime_overhead.py --rounds 5  # steadier numbers
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# No sys.path insert of the repo root: it would let `kernels` shadow Hugging Face's (clbench/sys_path_guard.py).

import torch  # noqa: E402

from clbench.resolve import resolve_config  # noqa: E402
from clbench.runner import run_cell  # noqa: E402

TARGET = 1.20
STREAM = {"scenario.n_experiences": 10, "scenario.train_per_exp": 5000, "scenario.test_per_exp": 1000}
SETTINGS = [(10, 100), (10, 50), (5, 100), (20, 200)]  # (eval_every, eval_subset); the suite uses the first


def cell_seconds(out: Path, strategy: str, every: int, subset: int, data_root) -> tuple[float, float, int]:
    """(wall seconds, seconds spent in the curve, points on it) of one fresh cell."""
    overrides = dict(STREAM, **{"train.eval_every": every, "train.eval_subset": subset})
    cfg = resolve_config("pmnist", strategy, seed=0, profile="quick", overrides=overrides)
    result = run_cell(cfg, out / f"{strategy}_{every}_{subset}_{len(list(out.iterdir()))}", data_root=data_root,
                      progress=False)
    if result["status"] != "ok":
        sys.exit(f"cell failed: {result['error']}")
    curve = result.get("anytime") or {}
    return result["wall_seconds"], curve.get("seconds", 0.0), len(curve.get("iteration", []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strategy", default="naive")
    ap.add_argument("--out", type=Path, default=HERE / "anytime_overhead.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data_root = os.environ.get("CLBENCH_DATA")
    ratios: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    shares: dict[tuple[int, int], list[float]] = {s: [] for s in SETTINGS}
    base_walls, points = [], {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cell_seconds(work, args.strategy, 0, 100, data_root)  # warm-up: page cache, lazy imports
        for r in range(args.rounds):
            base, _, _ = cell_seconds(work, args.strategy, 0, 100, data_root)
            base_walls.append(base)
            for every, subset in SETTINGS:
                wall, curve, points[(every, subset)] = cell_seconds(work, args.strategy, every, subset, data_root)
                ratios[(every, subset)].append(wall / base)
                shares[(every, subset)].append(curve / wall)
            print(f"round {r + 1}/{args.rounds}: base {base:.1f}s, " + ", ".join(
                f"every {e}/subset {s}: {ratios[(e, s)][-1]:.3f}x" for e, s in SETTINGS), flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        "# Anytime evaluation overhead (benchmarks/anytime_overhead.py)",
        "",
        f"Quick Permuted MNIST cell ({args.strategy}, 10 x 5000 images, minibatch 32, 1563 iterations, "
        f"1000 test images per experience), one torch thread. Cell wall time with the curve divided "
        f"by the wall time without it, taken within each of {args.rounds} interleaved rounds; median "
        f"over rounds. Target: <= {TARGET:.2f}x at the quick profile.",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs; load average {load_before:.1f} before, {load_after:.1f} after); "
        f"cell without the curve: median {statistics.median(base_walls):.1f} s.",
        "",
        "| eval_every (iterations) | eval_subset (images per task) | points per cell | wall time ratio | "
        "share of the cell in the curve | target met |",
        "|---|---|---|---|---|---|",
    ]
    for every, subset in SETTINGS:
        ratio = statistics.median(ratios[(every, subset)])
        share = statistics.median(shares[(every, subset)])
        lines.append(f"| {every} | {subset} | {points[(every, subset)]} | {ratio:.3f}x | {share * 100:.1f}% | "
                     f"{'yes' if ratio <= TARGET else 'NO'} |")
    lines += ["", f"suites/stability_gap.toml uses eval_every {SETTINGS[0][0]}, eval_subset {SETTINGS[0][1]}."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
