"""Speed of the gated DGD rule: token loop (naive) vs chunked closed form (chunk), CPU fp32.

Shapes B=8, H=4, K=V=16 at T=64 and T=256; chunk size 16; DGD term on; read before write.
Each cell is the median of 5 timed runs after one warm-up run: forward only (under
no_grad) and forward + backward (all six inputs require grad; loss = o.sum() + S_T.sum()).
Torch intra-op threads are whatever the environment sets (OMP_NUM_THREADS).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/dgd_rule_speed.py   # writes dgd_rule_speed.md
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# No sys.path insert of the repo root: it would let `kernels` shadow Hugging Face's (clbench/sys_path_guard.py).
# Run with the installed clbench: `.venv/bin/python benchmarks/<this file>` after `make install`.

import torch  # noqa: E402

from clbench.kernels.dgd_rule import dgd_rule  # noqa: E402
from clbench.kernels.dgd_rule.testing import random_inputs  # noqa: E402

SHAPES = [(8, 64, 4, 16, 16), (8, 256, 4, 16, 16)]  # B, T, H, K, V
CHUNK = 16
RUNS = 5
IMPLS = ("naive", "chunk")


def make_inputs(B: int, T: int, H: int, K: int, V: int) -> list[torch.Tensor]:
    return list(random_inputs(B, T, H, K, V, dtype=torch.float32))


def median_ms(fn: Callable[[], None]) -> float:
    fn()  # warm-up
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def time_impl(impl: str, inputs: list[torch.Tensor]) -> tuple[float, float]:
    def forward() -> None:
        with torch.no_grad():
            dgd_rule(*inputs, chunk_size=CHUNK, impl=impl)

    leaves = [x.clone().requires_grad_() for x in inputs]

    def forward_backward() -> None:
        o, s = dgd_rule(*leaves, chunk_size=CHUNK, impl=impl)
        (o.sum() + s.sum()).backward()
        for x in leaves:
            x.grad = None

    return median_ms(forward), median_ms(forward_backward)


def main() -> None:
    rows = []
    for shape in SHAPES:
        inputs = make_inputs(*shape)
        results = {impl: time_impl(impl, inputs) for impl in IMPLS}
        base_fwd, base_fb = results["naive"]
        for impl, (fwd, fb) in results.items():
            rows.append((shape, impl, fwd, base_fwd / fwd, fb, base_fb / fb))

    header = "| B, T, H, K, V | impl | fwd ms | fwd speed-up | fwd+bwd ms | fwd+bwd speed-up |"
    lines = [header, "|---|---|---|---|---|---|"]
    for shape, impl, fwd, fwd_x, fb, fb_x in rows:
        dims = ", ".join(map(str, shape))
        lines.append(f"| {dims} | {impl} | {fwd:.2f} | {fwd_x:.1f}x | {fb:.2f} | {fb_x:.1f}x |")
    table = "\n".join(lines)
    print(table)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    md = f"""# Gated DGD rule speed (benchmarks/dgd_rule_speed.py)

{datetime.now(timezone.utc).isoformat(timespec="seconds")}. CPU, fp32, chunk size {CHUNK}, DGD term on,
read before write. Median of {RUNS} runs after one warm-up; forward under no_grad, forward+backward
with all inputs requiring grad. Speed-up is naive time / impl time.

Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__},
{torch.get_num_threads()} intra-op thread(s), load average (1/5/15 min) at the end: {load}.
The machine is shared with other jobs, so absolute times are noisy; compare within a row group.

Command: `OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")} nice -n 10 python benchmarks/dgd_rule_speed.py`

{table}
"""
    (HERE / "dgd_rule_speed.md").write_text(md)


if __name__ == "__main__":
    main()
