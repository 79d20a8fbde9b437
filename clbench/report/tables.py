"""Markdown and CSV writers.

* `summary.md`: one table per scenario (see display.py), then failed, skipped and notes.
* `summary.csv` (wide): one row per (scenario, label), raw values (fractions for
  accuracy), mean / std / CI of every metric, the paired-test p-values, the
  Holm-adjusted ones (`*_holm`), and the paired differences to naive with CI and MDE.
* `long.csv` (tidy): one row per cell and metric, with the p-value of that
  metric's paired test against naive and against the best baseline, and the
  Holm-adjusted p where the metric's test is in the summary table's family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clbench.metrics import SCALAR_METRICS
from clbench.report.aggregate import IDENTITY_COLUMNS, STAT_KEYS, Analysis
from clbench.report.display import Cell, DisplayTable
from clbench.report.tuning import add_tuning_columns, tuning_markdown

# The columns of RUN_DIR/summary.csv (`write_summary_csv`); the report's wide
# summary.csv starts with the same ones.
SUMMARY_COLUMNS = [
    "scenario", "label", "strategy", "n_seeds",
    "acc_mean", "acc_std", "forgetting_mean", "forgetting_std",
    "bwt_mean", "bwt_std", "wall_seconds_mean", "wall_seconds_std",
]  # fmt: skip

ARROWS = {"high": "↑", "low": "↓", None: ""}


# --------------------------------------------------------------------------- markdown
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(cell: Cell) -> str:
    text = cell.text + (f" ± {cell.spread}" if cell.spread else "")
    text = _md_escape(text)
    return f"**{text}**" if cell.bold else text


def markdown_table(table: DisplayTable) -> str:
    headers = [_md_escape(f"{c.header} {ARROWS[c.better]}".strip()) for c in table.columns]
    align = ["---:" if c.numeric else ":---" for c in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def markdown_lists(title: str, items: list[str]) -> str:
    if not items:
        return ""
    body = "\n".join(f"- {_md_escape(item)}" for item in items)
    return f"## {title} ({len(items)})\n\n{body}\n"


def counts_line(analysis: Analysis) -> str:
    run = analysis.run
    return (
        f"{len(run.cells)} valid cell(s), {len(run.failed)} failed, {len(run.skipped)} skipped; "
        f"{len(analysis.scenarios)} scenario(s), {len(analysis.summary)} row(s)."
    )


def installs_line(cells: list[dict]) -> str:
    """Which dependency locks produced the cells (env.lock_sha256, recorded since the lock existed)."""
    counts: dict[str, list[int]] = {}
    for cell in cells:
        env = cell.get("env") or {}
        entry = counts.setdefault(str(env.get("lock_sha256", "not recorded"))[:12], [0, 0])
        entry[0] += 1
        entry[1] += env.get("lock_matches_install") is False
    parts = [f"{sha} ({n} cell(s){f', {off} not matching their install' if off else ''})"
             for sha, (n, off) in sorted(counts.items())]
    return "Installs (requirements/lock.txt SHA-256): " + "; ".join(parts) + "."


def render_markdown(analysis: Analysis, tables: list[DisplayTable]) -> str:
    parts = [f"# clbench report: {analysis.run_name}\n", counts_line(analysis) + "\n"]
    if analysis.run.cells:
        parts.append(installs_line(analysis.run.cells) + "\n")
    for i, table in enumerate(tables, start=1):
        parts.append(f"## {table.title}\n")
        parts.append(markdown_table(table) + "\n")
        parts.append(f"Table {i}. {table.caption}\n")
    run = analysis.run
    parts.append(tuning_markdown(run.cells))  # empty unless cells ran with `bench --tuned`
    parts.append(markdown_lists("Failed cells (not used in metrics)", [str(f) for f in run.failed]))
    parts.append(markdown_lists("Skipped", [str(s) for s in run.skipped]))
    parts.append(markdown_lists("Notes", analysis.notes))
    return "\n".join(p for p in parts if p).rstrip() + "\n"


# --------------------------------------------------------------------------- csv
def summary_frame(analysis: Analysis) -> pd.DataFrame:
    """The wide table: SUMMARY_COLUMNS first, then every other statistic."""
    s = analysis.summary
    if s.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rest = [c for c in s.columns if c not in SUMMARY_COLUMNS]
    return add_tuning_columns(s[SUMMARY_COLUMNS + rest], analysis.run.cells)


def long_frame(analysis: Analysis) -> pd.DataFrame:
    """Tidy table: one row per cell and metric (plus one per experience for forgetting)."""
    cells = analysis.cells
    ident = list(IDENTITY_COLUMNS)
    scalars = cells.melt(id_vars=ident, value_vars=list(STAT_KEYS), var_name="metric")
    scalars["experience"] = pd.NA
    per_exp = []
    for (scenario, label), g in analysis.groups.items():
        if g.forgetting.shape[1] == 0:
            continue
        rows = cells[(cells["scenario"] == scenario) & (cells["label"] == label)][ident]
        # Cells and g.forgetting are both in seed order: repeat each cell per experience.
        block = rows.loc[rows.index.repeat(g.forgetting.shape[1])].reset_index(drop=True)
        block["metric"] = "forgetting_exp"
        block["value"] = g.forgetting.ravel()
        block["experience"] = np.tile(np.arange(g.forgetting.shape[1]), len(rows))
        per_exp.append(block)
    long = pd.concat([scalars, *per_exp], ignore_index=True)
    return long.merge(_p_values_long(analysis), on=["scenario", "label", "metric"], how="left")


def _p_values_long(analysis: Analysis) -> pd.DataFrame:
    rows = []
    for _, r in analysis.summary.iterrows():
        for k in SCALAR_METRICS:
            rows.append(
                {
                    "scenario": r["scenario"],
                    "label": r["label"],
                    "metric": k,
                    "p_vs_naive": r[f"p_{k}_vs_naive"],
                    "best_baseline": r["best_baseline"],
                    "p_vs_best": r[f"p_{k}_vs_best"],
                    # NaN for metrics whose tests the tables do not show (not in the family).
                    "p_vs_naive_holm": r.get(f"p_{k}_vs_naive_holm", np.nan),
                    "p_vs_best_holm": r.get(f"p_{k}_vs_best_holm", np.nan),
                }
            )
    columns = ["scenario", "label", "metric", "p_vs_naive", "best_baseline", "p_vs_best",
               "p_vs_naive_holm", "p_vs_best_holm"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.10g")
    return path
