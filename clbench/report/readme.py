"""README tables generated from committed reports, never typed by hand.

A README block between two markers is rebuilt from a report's `summary.csv`:

    <!-- BEGIN generated: reports/quick/summary.csv -->
    ...
    <!-- END generated -->

A block naming a generated Markdown file instead (e.g. a report's `CONTROLS.md`, written by
`clbench.report.controls`) copies that file's first table, so planned comparisons can be
quoted without retyping a number; `FILE.md#name` copies the first table after its heading
`## name` (one scenario of a report with several; `-` stands for a space), or the whole section when it has no table
(generated prose, such as the study's answer in words).

`python -m clbench.report.readme README.md` (`make readme`) rewrites every such block;
`--check` only compares, and tests/test_readme_numbers.py runs that comparison, so a README
number that is not what the committed report says fails the tests.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

from clbench.report.display import NA, fmt_number, fmt_p

BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- END generated -->)", re.S)
SCENARIO_NAMES = {"pmnist": "P-MNIST", "split_mnist": "Split MNIST", "rotated_mnist": "Rotated MNIST",
                  "split_cifar100": "Split CIFAR-100",
                  "split_cifar100_features": "CIFAR-100 features", "clinc150": "CLINC150", "banking77": "Banking77"}
METRICS = (("acc", "ACC (%)"), ("forgetting", "forgetting (pp)"), ("plasticity", "plasticity (%)"))


def _cell(mean: float, ci: float) -> str:
    if not math.isfinite(mean):
        return NA
    return fmt_number(100 * mean, 1) + ("" if not math.isfinite(ci) else f" ± {fmt_number(100 * ci, 1)}")


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else fmt_p(value)  # "-": the reference row has no test


def headline_table(summary: pd.DataFrame) -> str:
    """Rows = labels in the report's order; per scenario ACC, forgetting and plasticity (mean ±
    95% CI over seeds) and the Holm-adjusted p of the ACC difference to naive."""
    scenarios = list(dict.fromkeys(summary["scenario"]))
    labels = list(dict.fromkeys(summary["label"]))
    by = {(r.scenario, r.label): r for r in summary.itertuples()}
    header = ["strategy"]
    for s in scenarios:
        name = SCENARIO_NAMES.get(s, s)
        header += [f"{name} {title}" for _, title in METRICS] + [f"{name} p(ACC vs naive, Holm)"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for label in labels:
        cells = [label + (" (upper bound)" if label == "joint" else "")]
        for s in scenarios:
            row = by.get((s, label))
            if row is None:
                cells += ["-"] * (len(METRICS) + 1)
                continue
            cells += [_cell(getattr(row, f"{m}_mean"), getattr(row, f"{m}_ci95")) for m, _ in METRICS]
            cells.append(_p(getattr(row, "p_acc_vs_naive_holm", math.nan)))
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted(set(summary["n_seeds"].astype(int)))
    lines.append("")
    lines.append(f"Mean ± 95% CI over {'/'.join(map(str, seeds))} seeds; Chaudhry forgetting; plasticity = mean "
                 "accuracy on each experience right after training on it; p: paired t-test on ACC against "
                 "naive over shared seeds, Holm-adjusted over each scenario table's family (see the report).")
    if "tuning_protocol" in summary.columns:
        protocols = sorted({str(p) for p in summary["tuning_protocol"].dropna() if str(p)})
        if protocols:
            lines.append(f"Hyper-parameters tuned with `clbench tune`, protocol {', '.join(protocols)}; chosen values "
                         "and tuning cost per row: the report's Tuning table.")
    return "\n".join(lines) + "\n"


def markdown_table(text: str, name: str, section: str = "") -> str:
    """The first Markdown table of a generated file (after the heading `## section`, if given, or that
    section's text when it holds no table), as its lines."""
    lines = text.splitlines()
    first = 0
    if section:
        # a block's path is one word, so `#Answer-in-words` names the heading `## Answer in words`
        first = next((i for i, line in enumerate(lines)
                      if line.startswith("## ") and line[3:].strip().replace(" ", "-") == section), None)
        if first is None:
            raise ValueError(f"{name} has no section '## {section}'")
    if section:  # a section without a table is quoted whole (generated prose, e.g. the study's answer)
        stop = next((i for i in range(first + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        if not any(line.startswith("|") for line in lines[first:stop]):
            return "\n".join(lines[first + 1:stop]).strip("\n") + "\n"
    start = next((i for i in range(first, len(lines)) if lines[i].startswith("|")), None)
    if start is None:
        raise ValueError(f"{name} has no Markdown table to quote")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def render_blocks(readme_text: str, root: Path) -> str:
    def rebuild(match: re.Match) -> str:
        name, _, section = match.group("path").partition("#")  # FILE.md#section: that section's table
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"README block names {name}, which does not exist")
        if path.suffix == ".md":
            return match.group(1) + markdown_table(path.read_text(), name, section) + match.group(4)
        return match.group(1) + headline_table(pd.read_csv(path)) + match.group(4)

    return BLOCK.sub(rebuild, readme_text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Rebuild (or --check) the README's generated tables.")
    ap.add_argument("readme", type=Path)
    ap.add_argument("--check", action="store_true", help="exit 1 if a block differs from its report")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    if not BLOCK.search(text):
        print(f"{args.readme}: no generated block", file=sys.stderr)
        return 1
    new = render_blocks(text, args.readme.resolve().parent)
    if args.check:
        if new != text:
            print(f"{args.readme}: a generated table differs from its report; run `make readme`", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
