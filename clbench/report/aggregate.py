"""From valid cells to per-(scenario, label) statistics over seeds.

* Metrics of each cell come from `clbench.metrics.cell_metrics`; intransigence
  uses the scenario's `joint` cells as the reference, when there are any.
* Over seeds: mean, sample standard deviation (ddof = 1) and the half-width of a
  95% confidence interval from Student's t with n - 1 degrees of freedom.
  n = 1 gives NaN std and CI, which tables show as "n/a".
* Each row is compared with `naive` and with the best other baseline (highest
  mean ACC in the scenario, excluding itself and joint) by a paired t-test on
  the seeds both have: two runs differing by 0.3 points are not a win unless p
  says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from clbench.metrics import COST_FIELDS, SCALAR_METRICS, as_matrix, cell_metrics
from clbench.report.load import LoadedRun

STAT_KEYS = SCALAR_METRICS + COST_FIELDS
# Per-cell columns of `Analysis.cells` (and of long.csv) besides the statistics.
IDENTITY_COLUMNS = (
    "run", "scenario", "scenario_type", "label", "strategy", "seed", "config_hash",
    "cell_id", "metric_name", "higher_is_better", "n_experiences",
)  # fmt: skip
NAIVE = "naive"
JOINT = "joint"  # trains on all experiences at once: the upper-bound reference


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
    return mean, std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def paired_p(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    """Two-sided paired t-test p-value on the seeds present in both, and the pair count.

    Fewer than 2 pairs or a NaN value gives NaN. Identical differences have zero
    variance: p is 1 when they are all 0 and 0 otherwise (the limit of the test).
    """
    seeds = sorted(set(a) & set(b))
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=float)
    if diffs.size < 2 or np.isnan(diffs).any():
        return math.nan, int(diffs.size)
    if np.all(diffs == diffs[0]):
        return (1.0 if diffs[0] == 0 else 0.0), int(diffs.size)
    # Same statistic as scipy.stats.ttest_rel, without its per-call overhead
    # (reports run hundreds of these).
    n = diffs.size
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), n - 1)), int(n)


def analyze(run: LoadedRun) -> Analysis:
    """Compute every metric of every cell, then aggregate over seeds."""
    by_group: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for data in run.cells:
        by_group[(data["scenario"], data["label"])].append(data)
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
    """p-values of every scalar metric vs naive and vs the best other baseline."""
    new: dict[str, list] = defaultdict(list)
    for _, row in summary.iterrows():
        scenario, label = row["scenario"], row["label"]
        best = _best_baseline(summary, scenario, label, scenarios[scenario].higher_is_better)
        new["best_baseline"].append(best or "")
        mine = values[(scenario, label)]
        for other, tag in ((NAIVE, "naive"), (best, "best")):
            theirs = values.get((scenario, other)) if other and other != label else None
            for k in SCALAR_METRICS:
                p = paired_p(mine[k], theirs[k])[0] if theirs else math.nan
                new[f"p_{k}_vs_{tag}"].append(p)
            new[f"n_pairs_vs_{tag}"].append(
                len(set(mine["acc"]) & set(theirs["acc"])) if theirs else 0
            )
    for col, vals in new.items():
        summary[col] = vals


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
