"""Self-modifying Titans on CPU: the chunked layer against its token-by-token reference.

Target (issue): at T = 64, d = 64 the chunked forward is at least 10x faster than the
naive token loop (`clbench/nested/hope/reference.py`). Both run the same layer, weights and
input in one process, interleaved run by run, float32, no autograd; median of --repeats
runs after a warm-up. The target row uses the chunk sizes nested_learning.md §8.4 suggests for T = 64
(8 for the projection memories, 16 for the main memory) and the paper's MLP memories; the
other rows show how the ratio moves with chunk size, memory kind, heads and batch.

    OMP_NUM_THREADS=1 python benchmarks/hope_chunked.py [--repeats 5]

Writes benchmarks/hope_chunked.md. Exits 1 if the target row misses 10x.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from timing import interleaved_medians  # benchmarks/timing.py

from clbench.nested.hope.reference import naive_titans
from clbench.nested.hope.titans import SelfModifyingTitans, TitansOptions

OUT = Path(__file__).with_suffix(".md")
TARGET = 10.0
# (label, batch, d_model, heads, memory, chunk_other, chunk_mem); the first row is the target.
CONFIGS = [
    ("target: T=64, d=64, MLP memory, chunks 8/16", 8, 64, 4, "mlp", 8, 16),
    ("chunks 4/8 (the T=16 defaults)", 8, 64, 4, "mlp", 4, 8),
    ("linear memory, chunks 8/16", 8, 64, 4, "linear", 8, 16),
    ("one head of width 64, chunks 8/16", 8, 64, 1, "mlp", 8, 16),
    ("batch 1, chunks 8/16", 1, 64, 4, "mlp", 8, 16),
]
T = 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for label, batch, d, heads, memory, c_other, c_mem in CONFIGS:
        torch.manual_seed(0)
        options = TitansOptions(heads=heads, memory=memory, chunk_other=c_other, chunk_mem=c_mem)
        layer = SelfModifyingTitans(d, options).eval()
        x = torch.randn(batch, T, d)
        with torch.no_grad():
            gap = (layer(x) - naive_titans(layer, x)).abs().max().item()
            chunked, naive = interleaved_medians(
                [lambda layer=layer, x=x: layer(x), lambda layer=layer, x=x: naive_titans(layer, x)], args.repeats
            )
        rows.append((label, batch, heads, memory, f"{c_other}/{c_mem}", naive, chunked, naive / chunked, gap))
        print(f"{label:45s} naive {naive * 1e3:8.1f} ms  chunked {chunked * 1e3:7.1f} ms  {naive / chunked:5.1f}x  max|diff| {gap:.1e}")
    met = rows[0][7] >= TARGET
    lines = [
        "# Self-modifying Titans: chunked layer vs token-by-token reference (CPU)",
        "",
        "| configuration | batch | heads | memory | chunks (other/mem) | naive ms | chunked ms | speedup | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5] * 1e3:.1f} | {r[6] * 1e3:.1f} | {r[7]:.1f}x | {r[8]:.1e} |"
        for r in rows
    ]
    lines += [
        "",
        f"T = {T}, d_model = 64, float32 forward without autograd, median of {args.repeats} runs after a warm-up, "
        f"both in one process, interleaved. Target: the first row at least {TARGET:.0f}x faster: **{'met' if met else 'MISSED'}**. "
        "The max abs diff column is float32 rounding between the two paths (tests/test_hope_titans.py checks 1e-10 in float64).",
        "",
        f"Machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, python {platform.python_version()}, "
        f"torch {torch.__version__}; load average (1 min) before the run {load_before:.2f}, after {os.getloadavg()[0]:.2f}. "
        f"Run at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
        f"python benchmarks/hope_chunked.py --repeats {args.repeats}`.",
        "",
    ]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {OUT}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
