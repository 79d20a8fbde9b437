"""Several runs side by side (before/after a change, CPU vs GPU, ...).

For every (scenario, label) present in any run: ACC and forgetting of each run,
then the difference of each later run against the first one, with a paired
t-test on the seeds both runs share (same seed, same stream), so that a small
delta from noise is not read as a regression. Each scenario's table is one Holm
family: its p-values are shown raw and Holm-adjusted (clbench.report.stats).
"""

from __future__ import annotations

import math

import pandas as pd

from clbench.report.aggregate import Analysis
from clbench.report.display import (
    Cell,
    Column,
    DisplayTable,
    fmt_number,
    fmt_signed,
    fmt_test,
    units_for,
)
from clbench.report.stats import holm, paired_diff
from clbench.report.tables import markdown_table

COMPARE_COLUMNS = [
    "scenario", "label", "run", "run_index", "run_dir", "n_seeds", "metric_name",
    "higher_is_better", "acc_mean", "acc_std", "acc_ci95", "forgetting_mean",
    "forgetting_std", "forgetting_ci95", "delta_acc_vs_first", "delta_forgetting_vs_first",
    "p_acc_vs_first", "n_pairs_vs_first", "status_acc_vs_first", "p_acc_vs_first_holm",
]  # fmt: skip
# Copied as they are from each run's summary row.
COPIED = [
    "n_seeds", "metric_name", "higher_is_better", "acc_mean", "acc_std", "acc_ci95",
    "forgetting_mean", "forgetting_std", "forgetting_ci95",
]  # fmt: skip


def unique_run_names(analyses: list[Analysis]) -> list[str]:
    """Directory names, suffixed with #k when two runs share a name."""
    names: list[str] = []
    for k, a in enumerate(analyses, start=1):
        names.append(a.run_name if a.run_name not in names else f"{a.run_name}#{k}")
    return names


def _keys(analyses: list[Analysis]) -> list[tuple[str, str]]:
    """(scenario, label) pairs: the first run's order, then rows only later runs have."""
    keys: list[tuple[str, str]] = []
    for a in analyses:
        for key in zip(a.summary["scenario"], a.summary["label"], strict=True):
            if key not in keys:
                keys.append(key)
    return sorted(keys, key=lambda k: (k[0], keys.index(k)))


def _per_seed(a: Analysis, scenario: str, label: str, key: str) -> dict[int, float]:
    c = a.cells[(a.cells["scenario"] == scenario) & (a.cells["label"] == label)]
    return dict(zip(c["seed"], c[key], strict=True))


def compare_frame(analyses: list[Analysis]) -> pd.DataFrame:
    """Tidy: one row per (scenario, label, run), deltas against the first run."""
    names = unique_run_names(analyses)
    first = analyses[0]
    rows = []
    for scenario, label in _keys(analyses):
        base = _row(first, scenario, label)
        for k, (a, name) in enumerate(zip(analyses, names, strict=True)):
            r = _row(a, scenario, label)
            if r is None:
                continue
            out = {"scenario": scenario, "label": label, "run": name, "run_index": k}
            out["run_dir"] = str(a.run.run_dir)
            out.update({c: r[c] for c in COPIED})
            comparable = k > 0 and base is not None and _same_metric(base, r)
            for m in ("acc", "forgetting"):
                out[f"delta_{m}_vs_first"] = (
                    r[f"{m}_mean"] - base[f"{m}_mean"] if comparable else math.nan
                )
            p, n, status = (math.nan, 0, "")
            if comparable:
                d = paired_diff(
                    _per_seed(a, scenario, label, "acc"), _per_seed(first, scenario, label, "acc")
                )
                p, n, status = d.p, d.n, d.status
            out["p_acc_vs_first"], out["n_pairs_vs_first"] = p, n
            out["status_acc_vs_first"] = status
            rows.append(out)
    frame = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    # One Holm family per scenario: the p-values of that scenario's table.
    for _, group in frame.groupby("scenario", sort=False):
        frame.loc[group.index, "p_acc_vs_first_holm"] = holm(group["p_acc_vs_first"])
    return frame


def _row(a: Analysis, scenario: str, label: str) -> pd.Series | None:
    s = a.summary
    hit = s[(s["scenario"] == scenario) & (s["label"] == label)]
    return None if hit.empty else hit.iloc[0]


def _same_metric(a: pd.Series, b: pd.Series) -> bool:
    return a["metric_name"] == b["metric_name"] and a["higher_is_better"] == b["higher_is_better"]


def compare_tables(frame: pd.DataFrame, names: list[str]) -> list[DisplayTable]:
    """One table per scenario: each run's ACC and forgetting, then deltas vs the first run."""
    tables = []
    for scenario, rows in frame.groupby("scenario", sort=True):
        u = units_for(rows["metric_name"].iloc[0])
        d = u.decimals
        columns = [Column("Strategy", numeric=False)]
        for name in names:
            columns += [Column(f"n [{name}]"), Column(f"ACC ({u.level}) [{name}]"),
                        Column(f"Forgetting ({u.delta}) [{name}]")]  # fmt: skip
        for name in names[1:]:
            vs = f"[{name} - {names[0]}]"
            columns += [Column(f"Δ ACC ({u.delta}) {vs}"), Column(f"Δ Forgetting ({u.delta}) {vs}"),
                        Column(f"p(Δ ACC) raw (Holm) {vs}")]  # fmt: skip
        body = []
        for label in dict.fromkeys(rows["label"]):
            by_run = {r["run"]: r for _, r in rows[rows["label"] == label].iterrows()}
            line = [Cell(label)]
            for name in names:
                r = by_run.get(name)
                if r is None:
                    line += [Cell("-"), Cell("absent"), Cell("absent")]
                    continue
                line += [Cell(str(r["n_seeds"]))]
                for m in ("acc", "forgetting"):
                    line.append(Cell(fmt_number(r[f"{m}_mean"] * u.scale, d),
                                     fmt_number(r[f"{m}_ci95"] * u.scale, d)))  # fmt: skip
            for name in names[1:]:
                r = by_run.get(name)
                if r is None:
                    line += [Cell("-"), Cell("-"), Cell("-")]
                    continue
                line += [Cell(fmt_signed(r["delta_acc_vs_first"] * u.scale, d)),
                         Cell(fmt_signed(r["delta_forgetting_vs_first"] * u.scale, d)),
                         Cell(fmt_test(r["p_acc_vs_first"], r["p_acc_vs_first_holm"],
                                       r["status_acc_vs_first"]))]  # fmt: skip
            body.append(line)
        caption = (
            f"Runs: {', '.join(names)}. Δ = later run minus {names[0]}, each mean over that run's"
            " own seeds (p uses only the seeds both share); ACC and forgetting are"
            " defined as in the summary tables (mean +/- 95% CI half-width over seeds);"
            " p: two-sided paired t-test on ACC over the seeds both runs share, raw, then in"
            " parentheses Holm-Bonferroni adjusted over this table's family: every p-value in"
            f" this table (each row, each later run vs {names[0]}, on ACC),"
            f" {int(rows['p_acc_vs_first'].notna().sum())} test(s);"
            " identical: every paired difference is 0; constant diff: the same non-zero"
            " difference on every shared seed (zero variance: no t-test, not p = 0);"
            " 'absent': that run has no valid cells for this row."
        )
        tables.append(DisplayTable(f"{scenario}: comparison", columns, body, caption,
                                   anchor=f"compare-{scenario}"))  # fmt: skip
    return tables


def render_compare_markdown(analyses: list[Analysis], tables: list[DisplayTable]) -> str:
    names = unique_run_names(analyses)
    parts = [f"# clbench comparison: {' vs '.join(names)}\n"]
    parts += [
        f"- {name}: `{a.run.run_dir}` ({len(a.run.cells)} valid cell(s))"
        for name, a in zip(names, analyses, strict=True)
    ]
    parts.append("")
    for i, table in enumerate(tables, start=1):
        parts += [
            f"## {table.title}\n",
            markdown_table(table) + "\n",
            f"Table {i}. {table.caption}\n",
        ]
    return "\n".join(parts).rstrip() + "\n"
