"""What `clbench tune` costs beyond its cells, on tiny cells (tests/plugins/tiny_val.py).

Runs `clbench tune` in this process under both protocols (TPE, no pruning) and
writes benchmarks/tune_overhead.md: wall time, the cells' own wall and CPU time,
and the per-trial overhead (Optuna, its SQLite storage, resolving and storing
cells), which is what a real suite pays on top of its cells. Usage:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_overhead.py [--trials 6]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import tomllib

from clbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = [str(ROOT / "tests" / "plugins" / name) for name in ("tiny_cells.py", "tiny_val.py")]
SUITE = f"""name = "tune_overhead"
profile = "smoke"
seeds = [0]
scenarios = ["tiny_blobs_val"]
strategies = ["naive"]
plugin_files = {json.dumps(PLUGINS)}
[scenario_args.tiny_blobs_val]
n_experiences = 4
train_per_exp = 400
[tune.naive]
lr = {{log = [0.003, 0.3]}}
"""


def measure(tmp: Path, protocol: list[str], trials: int) -> dict:
    suite = tmp / "suite.toml"
    suite.write_text(SUITE)
    out = tmp / protocol[1]
    t0 = time.perf_counter()
    rc = main(["tune", str(suite), "--out", str(out), "-q", *protocol, "--seeds", "100,101",
               "--trials", str(trials), "--pruner", "none"])
    wall = time.perf_counter() - t0
    assert rc == 0, rc
    results = [json.loads(p.read_text()) for p in out.glob("trials/*/*/cells/*/result.json")]
    record = tomllib.loads((out / "tuned.toml").read_text())["tiny_blobs_val"]["naive"]
    cell_wall = sum(r["wall_seconds"] for r in results)
    return {"protocol": " ".join(protocol[1:]), "trials": record["trials"], "cells": len(results),
            "tune_wall_s": wall, "cells_wall_s": cell_wall, "cells_cpu_s": record["cpu_seconds"],
            "overhead_per_trial_s": (wall - cell_wall) / record["trials"], "best_val_acc": record["objective"]}


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "tune_overhead.md"))
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "warm-up").mkdir()  # imports (Optuna, SQLAlchemy, the plugin) and caches, not measured
        measure(Path(tmp) / "warm-up", ["--protocol", "validation"], 1)
        rows = [measure(Path(tmp), ["--protocol", "validation"], args.trials),
                measure(Path(tmp), ["--protocol", "first_k", "--k", "2"], args.trials)]
    keys = list(rows[0])
    lines = [
        "# `clbench tune` overhead on tiny cells (benchmarks/tune_overhead.py)", "",
        f"tiny_blobs_val, 4 experiences of 400 samples, naive, lr searched by TPE, 2 tuning seeds, "
        f"{args.trials} trials per protocol after a 1-trial warm-up, in process, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}. "
        f"Load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2-core machine shared with "
        f"other jobs). Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
    ]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    lines += ["", "overhead_per_trial_s = (tune_wall_s - cells_wall_s) / trials: Optuna (TPE, SQLite storage), "
              "resolving the trial's cells, claims and result files; cells_cpu_s is tuned.toml's cpu_seconds."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_()
