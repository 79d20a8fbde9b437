"""How long `build_report` takes on 200 cells (target from issue 3: under 10 s).

Generates a synthetic run of 4 scenarios x 10 strategies x 5 seeds with T = 10
experiences (every figure at its largest: ten heatmap panels per scenario, all
annotated), times one cold `build_report` call with every format (plots and
matplotlib's import included), prints the result and appends it to
benchmarks/report_speed.txt. `load1` is the machine's 1-minute load average
at the end: other processes on the same CPUs slow the report down, and `cpu`
(user + system time, plot workers included) is what it costs on idle CPUs.

    python benchmarks/report_speed.py            # exit status 1 when over --limit
    CLBENCH_REPORT_JOBS=1 python benchmarks/report_speed.py   # single process
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# No sys.path insert of the repo root: it would let `kernels` shadow Hugging Face's (clbench/sys_path_guard.py).
# Run with the installed clbench: `.venv/bin/python benchmarks/<this file>` after `make install`.

SCENARIOS = ("pmnist", "split_mnist", "split_cifar100", "clinc150")
STRATEGIES = ("naive", "ewc", "si", "lwf", "replay", "agem", "der", "gdumb", "hope", "joint")
SEEDS = range(5)
T = 10


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (the plot workers)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=10.0, help="seconds allowed (default 10)")
    parser.add_argument("--out", type=Path, default=HERE / "report_speed.txt")
    args = parser.parse_args()

    start = time.perf_counter()
    from clbench.report import build_report
    from clbench.report.synthetic import write_synthetic_run

    import_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        n_cells = len(write_synthetic_run(run_dir, SCENARIOS, STRATEGIES, SEEDS, T))
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        result = build_report(run_dir)
        seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
        n_files = len(result.paths)

    verdict = "ok" if seconds < args.limit else f"OVER the {args.limit:.0f} s limit"
    jobs = os.environ.get("CLBENCH_REPORT_JOBS", "auto")
    line = (
        f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} cells={n_cells} "
        f"layout={len(SCENARIOS)}x{len(STRATEGIES)}x{len(SEEDS)} T={T} "
        f"build_report={seconds:.2f}s cpu={cpu_seconds:.2f}s import={import_seconds:.2f}s "
        f"files={n_files} "
        f"cpus={os.cpu_count()} load1={os.getloadavg()[0]:.1f} jobs={jobs} "
        f"python={platform.python_version()} {verdict}"
    )
    print(line)
    with args.out.open("a") as f:
        f.write(line + "\n")
    return 0 if seconds < args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
