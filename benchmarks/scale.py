"""Load test of the engines: a synthetic suite of tiny cells through the local engine
(`--jobs 2`) and through Ray on this machine.

    python benchmarks/scale.py                      # 500 cells, local and ray
    python benchmarks/scale.py --cells 50 --engines local

A cell is `naive` on `tiny_blobs` (tests/plugins/tiny_cells.py: 2 experiences of
64 samples in 8-D, no data files), about 0.1 s of work, so the engines' own
costs dominate. For each engine it reports:

- the engine's start-up: one warm-up cell, which pays for importing torch and
  Avalanche in the workers (once per fork server locally, started while the
  cells are resolved as `clbench bench` does; once per worker on Ray);
- cells per second over the suite, on the warm engine;
- the scheduler overhead per cell: (wall x slots - sum of the cells' own
  wall_seconds) / cells, i.e. every second a slot spent outside `run_cell`:
  forking workers, claims, sending configs, returning and writing results
  (with fsync), idle gaps; and the same with the start-up added.
  Targets: < 50 ms local, < 200 ms Ray;
- the driver's peak resident memory (sampled every 50 ms);
- that every cell has an ok result.

Ray's own start (`ray.init`, a cluster that is usually already running) is
timed apart and counted in neither.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "tiny_cells.py"
SLOTS = 2  # --jobs 2 locally, 2 CPUs for Ray
TARGET_MS = {"local": 50.0, "ray": 200.0}


def tiny_cells(n: int):
    from clbench.registry import load_plugin_file
    from clbench.resolve import resolve_config

    load_plugin_file(PLUGIN)
    return [resolve_config("tiny_blobs", "naive", seed=seed, profile="smoke") for seed in range(n)]


def measure(engine: str, cells, warmup, run_dir: Path) -> dict:
    """Time one warm-up cell (the engine's one-time start: importing torch and Avalanche in
    its worker processes), then the suite on the warm engine."""
    from clbench.engines import EngineOptions
    from clbench.runner import PeakMemory
    from clbench.store import read_result, result_path
    from clbench.suite import cell_ids, run_suite

    options = EngineOptions(engine=engine, jobs=SLOTS if engine == "local" else 1)
    with PeakMemory() as memory:
        start = time.perf_counter()
        run_suite([warmup], run_dir / "warmup", plugin_files=[str(PLUGIN)], progress=False, options=options)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        outcome = run_suite(cells, run_dir / "suite", plugin_files=[str(PLUGIN)], progress=False,
                            suite_name=f"scale_{engine}", options=options)
        wall = time.perf_counter() - start
    results = [read_result(result_path(run_dir / "suite", cid)) for cid in cell_ids(cells)]
    ok = sum(1 for r in results if r and r["status"] == "ok")
    busy = sum(r["wall_seconds"] for r in results if r)
    n = len(cells)
    return {
        "engine": engine, "cells": n, "ok": ok, "all_present": ok == n and len(outcome.ok) == n,
        "startup_s": round(startup, 1), "wall_s": round(wall, 2), "cells_per_s": round(n / wall, 2),
        "cell_work_ms": round(1000 * busy / n, 1),
        "overhead_ms_per_cell": round(1000 * (wall * SLOTS - busy) / n, 1),
        "overhead_with_startup_ms_per_cell": round(1000 * ((wall + startup) * SLOTS - busy) / n, 1),
        "target_ms": TARGET_MS[engine], "driver_peak_rss_mb": round(memory.peak_mb, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    engines = args.engines.split(",")
    if "local" in engines:  # as `clbench bench --jobs 2` does: workers import while we resolve the cells
        from clbench.engines.local import start_fork_server

        start_fork_server()
    *cells, warmup = tiny_cells(args.cells + 1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clbench_scale_") as tmp:
        for engine in engines:
            extra = {}
            if engine == "ray":
                from clbench.engines.ray_engine import import_ray

                ray = import_ray(local=True)  # services on 127.0.0.1, as the engine's own local instance

                t0 = time.perf_counter()
                ray.init(num_cpus=SLOTS, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
                extra["ray_init_s"] = round(time.perf_counter() - t0, 1)
            try:
                rows.append(measure(engine, cells, warmup, Path(tmp) / engine) | extra)
            finally:
                if engine == "ray":
                    ray.shutdown()
            print(json.dumps(rows[-1]), flush=True)
    print("\n| engine | cells | all ok | start-up (s) | wall (s) | cells/s | cell work (ms) | overhead/cell (ms) "
          "| with start-up (ms) | target (ms) | driver peak RSS (MB) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['engine']} | {r['cells']} | {r['all_present']} | {r['startup_s']} | {r['wall_s']} | "
              f"{r['cells_per_s']} | {r['cell_work_ms']} | {r['overhead_ms_per_cell']} | "
              f"{r['overhead_with_startup_ms_per_cell']} | {r['target_ms']:g} | {r['driver_peak_rss_mb']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["all_present"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
