"""Compare two reports' summary.csv row by row (ACC and forgetting) and write the differences.

Used to check what "reproducible" means across installs and machines (README, Reproducibility):
    .venv/bin/python benchmarks/compare_summaries.py OLD/summary.csv NEW/summary.csv --out FILE.md --note "..."
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

METRICS = ("acc_mean", "forgetting_mean", "plasticity_mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    old, new = pd.read_csv(args.old), pd.read_csv(args.new)
    rows = old.merge(new, on=["scenario", "label"], suffixes=("_old", "_new"))
    lines = [f"# {args.old} vs {args.new}", "", args.note, "",
             "| scenario | row | " + " | ".join(f"{m} old | {m} new | diff (pp)" for m in METRICS) + " |",
             "| --- | --- |" + " ---: | ---: | ---: |" * len(METRICS)]
    worst = {m: 0.0 for m in METRICS}
    for r in rows.itertuples():
        cells = []
        for m in METRICS:
            a, b = getattr(r, f"{m}_old"), getattr(r, f"{m}_new")
            worst[m] = max(worst[m], abs(b - a) * 100)
            cells += [f"{100 * a:.4f}", f"{100 * b:.4f}", f"{100 * (b - a):+.4f}"]
        lines.append(f"| {r.scenario} | {r.label} | " + " | ".join(cells) + " |")
    lines += ["", f"{len(rows)} rows; largest absolute difference: "
              + ", ".join(f"{m} {worst[m]:.4f} pp" for m in METRICS) + "."]
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
