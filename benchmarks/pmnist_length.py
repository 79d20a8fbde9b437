"""How long must the quick Permuted MNIST be for naive fine-tuning to forget >= 10 pp?

Runs naive on P-MNIST (quick training settings: SGD lr 0.1, one epoch, minibatch 64) for a few
stream lengths (experiences x training images per experience), 2 seeds each, through
`clbench bench` (so an interrupted run resumes), and writes forgetting, plasticity, ACC and
the mean cell wall time to benchmarks/pmnist_length.md. Issue 15 chose the quick length from it.

    .venv/bin/python benchmarks/pmnist_length.py [--work /tmp/plen] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (experiences, training images per experience, test images per experience, minibatch)
LENGTHS = [(10, 5000, 2000, 64), (20, 2500, 2000, 64), (10, 10000, 2000, 64), (15, 5000, 2000, 64),
           (10, 5000, 2000, 32), (10, 5000, 1000, 32)]
SEEDS = [0, 1]


def suite_text(t: int, n_train: int, n_test: int, batch: int) -> str:
    return (f'name = "plen_{t}_{n_train}"\nprofile = "quick"\nseeds = {SEEDS}\nscenarios = ["pmnist"]\n'
            f'strategies = ["naive"]\n\n[set]\ntrain_mb_size = {batch}\n\n[scenario_args.pmnist]\n'
            f"n_experiences = {t}\ntrain_per_exp = {n_train}\ntest_per_exp = {n_test}\n")


def run_length(work: Path, t: int, n_train: int, n_test: int, batch: int, jobs: int) -> dict[str, float]:
    name = f"s_{t}_{n_train}" + ("" if (n_test, batch) == (2000, 64) else f"_{n_test}_mb{batch}")
    suite = work / f"{name}.toml"
    suite.write_text(suite_text(t, n_train, n_test, batch))
    clbench = Path(sys.executable).with_name("clbench")
    subprocess.run([str(clbench), "bench", str(suite), "--out", str(work / f"run_{name}"), "--jobs", str(jobs),
                    "-q", "--report", str(work / f"rep_{name}")], check=True)
    row = next(csv.DictReader((work / f"rep_{name}" / "summary.csv").open()))
    return {key: float(row[key]) for key in ("acc_mean", "forgetting_mean", "forgetting_std", "plasticity_mean",
                                             "wall_seconds_mean")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/plen"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "pmnist_length.md")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Quick P-MNIST length: naive forgetting by stream length",
        "",
        f"Written by `benchmarks/pmnist_length.py` on {datetime.now(timezone.utc):%Y-%m-%d}, "
        f"{os.cpu_count()} cores, seeds {SEEDS}, naive, quick training (SGD lr 0.1, 1 epoch, minibatch 64). "
        "Forgetting: Chaudhry et al. (2018). Wall time is per cell, measured with `--jobs 2` on a machine "
        "shared with other jobs (load 5-8), so read it only relative to the other rows.",
        "",
        "| experiences x train images | test images / exp | minibatch | ACC (%) | forgetting (pp, mean ± sd) "
        "| plasticity (%) | wall s / cell |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t, n_train, n_test, batch in LENGTHS:
        r = run_length(args.work, t, n_train, n_test, batch, args.jobs)
        lines.append(f"| {t} x {n_train} | {n_test} | {batch} | {100 * r['acc_mean']:.1f} | "
                     f"{100 * r['forgetting_mean']:.1f} ± {100 * r['forgetting_std']:.1f} | "
                     f"{100 * r['plasticity_mean']:.1f} | {r['wall_seconds_mean']:.0f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
