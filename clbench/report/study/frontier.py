"""Stability-plasticity curves of the study's sweeps, and a row read against another's curve.

A method's curve on one stream is its tuned arm plus every row that takes that arm's tuned
values and changes only the method's own knob (`tuned_as` in suites/study/*.toml: EWC's
lambda, the CMS slow levels' lr multiplier, replay's buffer size). Each point is a row's
(plasticity, forgetting), per seed.

"Forgets less at equal plasticity" (docs/study.md) is then read per seed: the row's forgetting
minus the control's curve at the row's plasticity (linear interpolation between the control's
points of the same seed; a seed whose row plasticity lies outside the control's range gives
no reading, never an extrapolation). The gaps are tested like any paired difference, and the
primary readings form their own Holm family.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from clbench.report.controls import per_seed
from clbench.report.load import LoadedRun
from clbench.report.stats import holm, paired_diff


def sweep_members(run: LoadedRun) -> dict[tuple[str, str], list[str]]:
    """(scenario, arm) -> the labels of its curve, the arm first."""
    members: dict[tuple[str, str], list[str]] = {}
    for cell in run.cells:
        tuning = (cell.get("config") or {}).get("tuning") or {}
        if tuning.get("role") == "borrowed":
            labels = members.setdefault((cell["scenario"], tuning["from"]), [tuning["from"]])
            if cell["label"] not in labels:
                labels.append(cell["label"])
    return members


def curve_points(long: pd.DataFrame, scenario: str, labels: list[str]) -> pd.DataFrame:
    """seed, label, plasticity, forgetting of every cell of a curve."""
    rows = []
    for label in labels:
        plasticity = per_seed(long, scenario, label, "plasticity")
        forgetting = per_seed(long, scenario, label, "forgetting")
        rows += [{"seed": s, "label": label, "plasticity": plasticity[s], "forgetting": forgetting[s]}
                 for s in sorted(set(plasticity) & set(forgetting))]
    return pd.DataFrame(rows, columns=["seed", "label", "plasticity", "forgetting"])


def forgetting_on_curve(points: pd.DataFrame, seed: int, plasticity: float) -> float:
    """The curve of one seed interpolated at `plasticity`; NaN outside its range or with < 2 points."""
    p = points[points.seed == seed].dropna().sort_values("plasticity")
    if len(p) < 2 or not p.plasticity.min() <= plasticity <= p.plasticity.max():
        return math.nan
    return float(np.interp(plasticity, p.plasticity.to_numpy(), p.forgetting.to_numpy()))


def frontier_frame(long: pd.DataFrame, run: LoadedRun, contrasts: pd.DataFrame) -> pd.DataFrame:
    """Per (contrast, scenario) whose control has a sweep: the mean gap (row - control's curve
    at the row's plasticity) in forgetting, its 95% CI, raw p, n seeds with a reading and the
    Holm p within the contrast's kind (primary or exploratory)."""
    members = sweep_members(run)
    records = []
    for c in contrasts.itertuples():
        labels = members.get((c.scenario, c.control))
        if not labels:
            continue
        points = curve_points(long, c.scenario, labels)
        row_plasticity = per_seed(long, c.scenario, c.row, "plasticity")
        row_forgetting = per_seed(long, c.scenario, c.row, "forgetting")
        on_curve = {s: forgetting_on_curve(points, s, p) for s, p in row_plasticity.items()}
        on_curve = {s: v for s, v in on_curve.items() if math.isfinite(v)}
        d = paired_diff({s: row_forgetting[s] for s in on_curve if s in row_forgetting}, on_curve)
        records.append({"contrast": c.contrast, "kind": c.kind, "scenario": c.scenario, "row": c.row,
                        "control": c.control, "curve": " ".join(labels), "n": d.n, "gap": d.mean,
                        "ci95": d.ci95, "p": d.p, "status": d.status,
                        "seeds_outside": len(row_plasticity) - d.n})
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    frame["p_holm"] = math.nan
    for kind in frame.kind.unique():
        mask = frame.kind == kind
        frame.loc[mask, "p_holm"] = holm(frame.loc[mask, "p"].to_numpy())
    return frame


def plot_scenario(long: pd.DataFrame, run: LoadedRun, scenario: str, highlight: list[str]) -> bytes | None:
    """Every sweep curve of the stream (mean over seeds per point, knob values named) and the
    `highlight` rows as points: x plasticity, y forgetting with the axis inverted, so that
    up is more stable."""
    curves = {arm: labels for (s, arm), labels in sweep_members(run).items() if s == scenario}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbench.report.plots import _png

    fig, ax = plt.subplots(figsize=(7, 5))
    for arm, labels in curves.items():
        mean = curve_points(long, scenario, labels).groupby("label", sort=False)[["plasticity", "forgetting"]].mean()
        line = mean.sort_values("plasticity")
        (handle,) = ax.plot(100 * line.plasticity, 100 * line.forgetting, "o-", label=f"{arm} sweep", alpha=0.8)
        for label, point in mean.iterrows():
            knob = "tuned" if label == arm else label.rsplit("_", 1)[-1]
            ax.annotate(knob, (100 * point.plasticity, 100 * point.forgetting), fontsize=7,
                        textcoords="offset points", xytext=(3, 3), color=handle.get_color())
    for label in highlight:
        pts = curve_points(long, scenario, [label])
        if len(pts) and label not in curves:
            ax.plot(100 * pts.plasticity.mean(), 100 * pts.forgetting.mean(), "s", ms=8, label=label)
    ax.invert_yaxis()
    ax.set_xlabel("plasticity (%): accuracy on each experience right after learning it")
    ax.set_ylabel("forgetting (pp), axis inverted: up = more stable")
    ax.set_title(f"{scenario}: stability-plasticity sweeps (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
