"""From valid cells to per-(scenario, label) statistics over seeds.

* Metrics of each cell come from `clbench.metrics.cell_metrics`; intransigence
  uses the scenario's `joint` cells as the reference, when there are any.
* Over seeds: mean, sample standard deviation (ddof = 1) and the half-width of a
  95% confidence interval from Student's t with n - 1 degrees of freedom.
  n = 1 gives NaN std and CI, which tables show as "n/a".
* Each row is compared with `naive` (the reference row) and with the best other
  baseline (highest mean ACC in the scenario, excluding itself and joint) by a
  paired t-test on the seeds both have: two runs differing by 0.3 points are not a
  win unless p says so. For ACC and forgetting the paired difference to naive is
  kept with its 95% CI and minimum detectable effect, and each scenario's shown
  p-values are Holm-adjusted as one family (clbench.report.stats).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clbench.metrics import COST_FIELDS, SCALAR_METRICS, as_matrix, cell_metrics
from clbench.report.frames import cell_arrays, matrix_frame
from clbench.report.load import LoadedRun
from clbench.report.stats import OK, holm, mde_in_sd, paired_diff, t_975

STAT_KEYS = SCALAR_METRICS + COST_FIELDS
# Per-cell columns of `Analysis.cells` (and of long.csv) besides the statistics.
IDENTITY_COLUMNS = (
    "run", "scenario", "scenario_type", "label", "strategy", "seed", "config_hash",
    "cell_id", "metric_name", "higher_is_better", "n_experiences",
)  # fmt: skip
NAIVE = "naive"
JOINT = "joint"  # trains on all experiences at once: the upper-bound reference
# Metrics whose paired difference to naive (with CI and detectable effect) tables show.
REFERENCE_METRICS = ("acc", "forgetting")


@dataclass
class Group:
    """All seeds of one (scenario, label), with the vectors plots need."""

    scenario: str
    label: str
    strategy: str
    config_hash: str
    seeds: list[int]
    matrices: np.ndarray  # (n_seeds, T, T)
    seen_average: np.ndarray  # (n_seeds, T): A_k
    forgetting: np.ndarray  # (n_seeds, T-1): per-experience forgetting


@dataclass
class ScenarioInfo:
    name: str
    scenario_type: str
    metric_name: str
    higher_is_better: bool
    n_experiences: int
    joint_label: str | None  # the row whose final accuracies define intransigence


@dataclass
class Analysis:
    run_name: str
    run: LoadedRun
    cells: pd.DataFrame  # one row per cell: scalar metrics and costs
    summary: pd.DataFrame  # one row per (scenario, label), in display order
    groups: dict[tuple[str, str], Group]
    scenarios: dict[str, ScenarioInfo]
    notes: list[str] = field(default_factory=list)


def seed_stats(values) -> tuple[float, float, float]:
    """(mean, std, 95% CI half-width) over seeds; NaN propagates, n = 1 gives NaN spread."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(x))
    if n < 2:
        return mean, math.nan, math.nan
    std = float(np.std(x, ddof=1))
    return mean, std, t_975(n - 1) * std / math.sqrt(n)


def paired_p(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    """(p, pair count) of `paired_diff(a, b)`: see clbench.report.stats for zero variance."""
    d = paired_diff(a, b)
    return d.p, d.n


def analyze(run: LoadedRun) -> Analysis:
    """Compute every metric of every cell, then aggregate over seeds.

    Matrices are read back from `matrix_frame` (what `clbench.load` returns), so the
    report and the API cannot disagree on a cell's numbers.
    """
    arrays = cell_arrays(matrix_frame(run))
    by_group: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for data in run.cells:
        initial, matrix = arrays[data["cell_id"]]
        by_group[(data["scenario"], data["label"])].append({**data, "initial": initial, "matrix": matrix})
    scenarios = _scenario_info(by_group)
    joint_refs = _joint_references(by_group, scenarios)

    rows, groups = [], {}
    for (scenario, label), members in sorted(by_group.items()):
        members.sort(key=lambda d: d["seed"])
        per_cell = [cell_metrics(d, joint_refs.get(scenario)) for d in members]
        for data, m in zip(members, per_cell, strict=True):
            rows.append({**_identity(data, run.name), **{k: m[k] for k in STAT_KEYS}})
        groups[(scenario, label)] = Group(
            scenario=scenario,
            label=label,
            strategy=members[0]["strategy"],
            config_hash=members[0]["config_hash"],
            seeds=[d["seed"] for d in members],
            matrices=np.stack([as_matrix(d["matrix"]) for d in members]),
            seen_average=np.array([m["seen_average"] for m in per_cell]),
            forgetting=np.array([m["forgetting_per_exp"] for m in per_cell]).reshape(
                len(members), -1
            ),
        )
    cells = pd.DataFrame(rows, columns=list(IDENTITY_COLUMNS) + list(STAT_KEYS))
    summary = _summarize(cells, groups, scenarios)
    notes = [
        f"{g.scenario}/{g.label}: only 1 seed (n=1): no standard deviation, CI or t-test"
        for g in groups.values()
        if len(g.seeds) == 1
    ]
    for name, info in scenarios.items():
        if info.joint_label is None:
            notes.append(f"{name}: no joint cells, so intransigence is not reported")
    return Analysis(run.name, run, cells, summary, groups, scenarios, notes)


def _identity(data: dict, run_name: str) -> dict:
    row = {k: data.get(k, "") for k in IDENTITY_COLUMNS}
    row["run"] = run_name
    return row


def _scenario_info(by_group) -> dict[str, ScenarioInfo]:
    """One entry per scenario; load_run already made metric and T consistent in it."""
    out: dict[str, ScenarioInfo] = {}
    joint_labels: dict[str, list[str]] = defaultdict(list)
    for (scenario, label), members in sorted(by_group.items()):
        first = members[0]
        out.setdefault(
            scenario,
            ScenarioInfo(
                name=scenario,
                scenario_type=str(first.get("scenario_type", "")),
                metric_name=first["metric_name"],
                higher_is_better=first["higher_is_better"],
                n_experiences=first["n_experiences"],
                joint_label=None,
            ),
        )
        if first["strategy"] == JOINT:
            joint_labels[scenario].append(label)
    # Prefer the row literally labelled "joint"; else the first row running joint.
    for scenario, labels in joint_labels.items():
        out[scenario].joint_label = JOINT if JOINT in labels else labels[0]
    return out


def _joint_references(by_group, scenarios) -> dict[str, list[float]]:
    """Per scenario, joint's final row averaged over its seeds (all its rows are equal)."""
    refs = {}
    for name, info in scenarios.items():
        if info.joint_label is not None:
            finals = [as_matrix(d["matrix"])[-1] for d in by_group[(name, info.joint_label)]]
            refs[name] = np.mean(finals, axis=0).tolist()
    return refs


def _summarize(cells: pd.DataFrame, groups, scenarios) -> pd.DataFrame:
    values = {
        key: {k: dict(zip(df["seed"], df[k], strict=True)) for k in STAT_KEYS}
        for key, df in cells.groupby(["scenario", "label"], sort=False)
    }
    rows = []
    for (scenario, label), g in groups.items():
        info = scenarios[scenario]
        row = {
            "scenario": scenario,
            "label": label,
            "strategy": g.strategy,
            "n_seeds": len(g.seeds),
            "seeds": ";".join(str(s) for s in g.seeds),
            "config_hash": g.config_hash,
            "metric_name": info.metric_name,
            "higher_is_better": info.higher_is_better,
            "n_experiences": info.n_experiences,
            # Joint rows are references: never bold, never "the best baseline", listed last.
            "is_reference": g.strategy == JOINT,
        }
        for k in STAT_KEYS:
            row[f"{k}_mean"], row[f"{k}_std"], row[f"{k}_ci95"] = seed_stats(
                [values[(scenario, label)][k][s] for s in g.seeds]
            )
        rows.append(row)
    summary = pd.DataFrame(rows)
    _add_paired_tests(summary, values, scenarios)
    order = sorted(range(len(summary)), key=lambda i: _row_order(summary.iloc[i]))
    return summary.iloc[order].reset_index(drop=True)


def _row_order(row) -> tuple:
    """Scenarios alphabetically; naive first (lower bound), joint rows last (upper bound)."""
    rank = 2 if row["is_reference"] else int(row["label"] != NAIVE)
    return (row["scenario"], rank, row["label"])


def _add_paired_tests(summary: pd.DataFrame, values, scenarios) -> None:
    """Paired tests of every scalar metric vs naive and vs the best other baseline.

    For the metrics the tables compare (REFERENCE_METRICS) the difference to naive is
    kept too, with its CI, the SD of the per-seed differences and the minimum
    detectable effect; then Holm-adjusted p-values over each scenario's family.
    """
    new: dict[str, list] = defaultdict(list)
    for _, row in summary.iterrows():
        scenario, label = row["scenario"], row["label"]
        best = _best_baseline(summary, scenario, label, scenarios[scenario].higher_is_better)
        new["best_baseline"].append(best or "")
        mine = values[(scenario, label)]
        by_tag = {}
        for other, tag in ((NAIVE, "naive"), (best, "best")):
            theirs = values.get((scenario, other)) if other and other != label else None
            by_tag[tag] = {
                k: paired_diff(mine[k], theirs[k] if theirs else {}) for k in SCALAR_METRICS
            }
            for k, d in by_tag[tag].items():
                new[f"p_{k}_vs_{tag}"].append(d.p)
            new[f"n_pairs_vs_{tag}"].append(by_tag[tag]["acc"].n)
        new["status_acc_vs_best"].append(by_tag["best"]["acc"].status if best else "")
        for k in REFERENCE_METRICS:
            d = by_tag["naive"][k]
            new[f"diff_{k}_vs_naive"].append(d.mean)
            new[f"diff_{k}_vs_naive_ci95"].append(d.ci95)
            new[f"diff_{k}_vs_naive_sd"].append(d.sd)
            new[f"status_{k}_vs_naive"].append(d.status if label != NAIVE else "")
            # Only a test that ran has a detectable effect (zero SD would give a fake 0).
            new[f"mde_{k}_vs_naive"].append(mde_in_sd(d.n) * d.sd if d.status == OK else math.nan)
        new["mde_sd_units"].append(mde_in_sd(by_tag["naive"]["acc"].n))
    for col, vals in new.items():
        summary[col] = vals
    _add_holm(summary)


# The p-values each summary table shows: (metric, compared with). The Holm family
# of a scenario is every distinct test among them (a pair tested twice counts once).
HOLM_FAMILY = (("acc", "naive"), ("forgetting", "naive"), ("acc", "best"))


def holm_tests(rows: pd.DataFrame) -> tuple[dict[tuple, float], list[tuple[Any, str, tuple]]]:
    """The distinct tests one scenario's table shows, {(frozenset(pair), metric): raw p}, and
    where each shown p sits: (row index, its _holm column, test key)."""
    tests: dict[tuple, float] = {}
    cells = []
    for idx, r in rows.iterrows():
        for k, tag in HOLM_FAMILY:
            other = NAIVE if tag == "naive" else r["best_baseline"]
            p = r[f"p_{k}_vs_{tag}"]
            if not isinstance(other, str) or not other or other == r["label"] or not math.isfinite(p):
                continue
            key = (frozenset((r["label"], other)), k)
            tests.setdefault(key, p)
            cells.append((idx, f"p_{k}_vs_{tag}_holm", key))
    return tests, cells


def _add_holm(summary: pd.DataFrame) -> None:
    """p_<metric>_vs_<tag>_holm columns and holm_family_size (tests in the scenario's family)."""
    for k, tag in HOLM_FAMILY:
        summary[f"p_{k}_vs_{tag}_holm"] = math.nan
    summary["holm_family_size"] = 0
    for _, rows in summary.groupby("scenario", sort=False):
        tests, cells = holm_tests(rows)
        adjusted = dict(zip(tests, holm(list(tests.values())), strict=True))
        for idx, col, key in cells:
            summary.at[idx, col] = adjusted[key]
        summary.loc[rows.index, "holm_family_size"] = len(tests)


def _best_baseline(
    summary: pd.DataFrame, scenario: str, label: str, higher_is_better: bool
) -> str | None:
    """Label with the best mean ACC in the scenario, excluding `label` and joint rows."""
    sign = 1.0 if higher_is_better else -1.0
    mask = (summary["scenario"] == scenario) & (summary["label"] != label)
    candidates = summary[mask & ~summary["is_reference"] & summary["acc_mean"].notna()]
    if candidates.empty:
        return None
    scores = sign * candidates["acc_mean"]
    best = candidates[scores == scores.max()]["label"]
    return str(sorted(best)[0])
