"""Peak resident memory of whole Permuted MNIST cells, one fresh process per cell.

Each cell is `clbench run` in its own child process; its peak RSS is the
kernel's ru_maxrss of that child (taken by a small wrapper process, so that
one cell's peak never hides another's), next to the peak the runner samples
itself (`result.json: peak_rss_mb`). Streams are lazy (scenarios/lazy.py), so
the peak should not grow with the number of experiences.

Cells (all on the real 60k MNIST training base, naive, seed 0):

- `full`: the full profile, 10 experiences x 60k training images, 10k test each
  (1 epoch, minibatch 10 as the protocol says; a few minutes on 2 cores).
  `--full-mb N` trains it with minibatch N instead, to save time (said in the table).
- `5 exp` / `20 exp`: 5 and 20 experiences, training capped at `--cap` images
  per experience (a seeded subsample of the 60k base), the full 10k test set each.

Targets: full <= 1024 MB; 20 exp within 10% of 5 exp.

    CLBENCH_DATA=/work/shared/data python benchmarks/memory.py [--skip-full] [--cap 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from results_file import replace_section  # benchmarks/results_file.py

HERE = Path(__file__).resolve().parent
SECTION = "## Peak memory of streams (benchmarks/memory.py)"
BEGIN, END = "<!-- memory.py table: begin -->", "<!-- memory.py table: end -->"
FULL_TARGET_MB, GROWTH_TARGET = 1024.0, 0.10

# Runs `argv` as a child and prints the child's peak RSS in MB (ru_maxrss is in KiB on Linux).
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
)


def run_cell(profile: str, sets: list[str], data_root: str) -> dict:
    """(child peak RSS MB, runner-sampled peak MB, wall s, status) of one `clbench run` process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "clbench", "run", "--scenario", "pmnist", "--strategy", "naive", "--seed", "0",
               "--profile", profile, "--data-root", data_root, "--out", tmp, "--no-download"]
        for s in sets:
            cmd += ["--set", s]
        out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
        rc, peak = out.stdout.split()
        results = list(Path(tmp).glob("cells/*/result.json"))
        result = json.loads(results[0].read_text()) if results else {}
    return {
        "rc": int(rc), "peak_mb": float(peak), "runner_peak_mb": result.get("peak_rss_mb"),
        "wall_s": result.get("wall_seconds"), "status": result.get("status"), "error": result.get("error"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("CLBENCH_DATA", "/work/shared/data"))
    parser.add_argument("--cap", type=int, default=2000, help="training images per experience in the 5/20 cells")
    parser.add_argument("--skip-full", action="store_true", help="leave out the full 10 x 60k cell")
    parser.add_argument("--full-mb", type=int, default=None, help="minibatch of the full cell (default: the profile's 10)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()

    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    cells = {}
    capped = [f"scenario.train_per_exp={args.cap}", "scenario.test_per_exp=10000", "train_mb_size=64"]
    for n in (5, 20):
        cells[f"{n} exp x {args.cap} train (60k base), 10k test each, quick profile"] = (
            "quick", [f"scenario.n_experiences={n}", *capped])
    if not args.skip_full:
        mb = [f"train_mb_size={args.full_mb}"] if args.full_mb else []
        label = f"full: 10 exp x 60k train, 10k test each, minibatch {args.full_mb or 10}"
        cells[label] = ("full", mb)
    rows = {}
    for label, (profile, sets) in cells.items():
        r = run_cell(profile, sets, args.data_root)
        rows[label] = r
        print(f"{label}: peak {r['peak_mb']:.0f} MB (runner {r['runner_peak_mb']}), {r['wall_s'] or 0:.0f} s, {r['status']}",
              flush=True)

    five, twenty = (next(r for k, r in rows.items() if k.startswith(f"{n} exp")) for n in (5, 20))
    growth = twenty["peak_mb"] / five["peak_mb"] - 1
    lines = ["| cell | peak RSS MB (ru_maxrss) | runner's sampled peak MB | wall s | status |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['peak_mb']:.0f} | {r['runner_peak_mb']} | {r['wall_s'] or 0:.0f} | {r['status']} |")
    checks = [f"20 vs 5 experiences: {growth:+.1%} (target within {GROWTH_TARGET:.0%}): "
              f"{'met' if abs(growth) <= GROWTH_TARGET else 'NOT met'}"]
    full = [r for k, r in rows.items() if k.startswith("full")]
    if full:
        checks.append(f"full cell: {full[0]['peak_mb']:.0f} MB (target <= {FULL_TARGET_MB:.0f} MB): "
                      f"{'met' if full[0]['peak_mb'] <= FULL_TARGET_MB else 'NOT met'}")
    load_after = os.getloadavg()
    loads = "before {}, after {}".format(*("/".join(f"{x:.2f}" for x in la) for la in (load_before, load_after)))
    body = "\n".join(lines) + "\n\n" + "\n".join(f"- {c}" for c in checks) + (
        "\n\nEach cell is `clbench run --scenario pmnist --strategy naive --seed 0` in a fresh process "
        "(the settings in the first column); peak RSS is the child's ru_maxrss, so it includes torch and "
        f"Avalanche themselves. Load average (1/5/15 min) {loads} (shared 2-core machine). "
        f"Run at {started:%Y-%m-%d %H:%M} UTC by `python benchmarks/memory.py {' '.join(sys.argv[1:])}`.\n"
    )
    print("\n" + body)
    replace_section(args.results, SECTION, BEGIN, END, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
