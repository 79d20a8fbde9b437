"""Stability-plasticity curves of the study's sweeps, and a row read against another's curve.

A method's curve on one stream is its tuned arm plus every row that takes that arm's tuned
values and changes only the method's own knob (`tuned_as` in suites/study/*.toml: EWC's
lambda, the CMS slow levels' lr multiplier, replay's buffer size). Each point is a row's
(plasticity, forgetting), per seed.

"Forgets less at equal plasticity" (docs/study.md) is then read per seed: the row's forgetting
minus the control's curve at the row's plasticity. The curve is the control's frontier: its
points that no other point of the same seed beats on both axes (as plastic or more, and
forgetting as little or less), joined linearly. A knob often reaches one plasticity twice
(CLINC150's EWC: lambda 1 and 3e4 learn equally well, one forgets far more), and a
line through every point by plasticity would zig-zag between them; the frontier is what the
knob can buy. A seed whose row plasticity lies outside the frontier's range gives no reading,
never an extrapolation. The gaps are tested like any paired difference, and the primary
readings form their own Holm family.
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


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats on both axes (plasticity up, forgetting down), by plasticity."""
    best_first = points.sort_values(["plasticity", "forgetting"], ascending=[False, True])
    keep, lowest = [], math.inf
    for index, forgetting in best_first.forgetting.items():
        if forgetting < lowest:  # beats every point at least as plastic
            keep.append(index)
            lowest = forgetting
    return points.loc[keep].sort_values("plasticity")


def forgetting_on_curve(points: pd.DataFrame, seed: int, plasticity: float) -> float:
    """The frontier of one seed interpolated at `plasticity`; NaN outside its range or with < 2 points."""
    front = pareto_front(points[points.seed == seed].dropna())
    if len(front) < 2 or not front.plasticity.min() <= plasticity <= front.plasticity.max():
        return math.nan
    return float(np.interp(plasticity, front.plasticity.to_numpy(), front.forgetting.to_numpy()))


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


def plot_scenario(long: pd.DataFrame, run: LoadedRun, scenario: str, highlight: list[str],
                  controls: set[str]) -> bytes | None:
    """The sweep curve of every contrast control on the stream (mean over seeds per point, knob
    values named) and the `highlight` rows as points: x plasticity, y forgetting with the axis
    inverted, so that up is more stable. A row that borrows another's tuning without being a
    control's curve (hope_p1 takes hope's lr) draws no curve."""
    curves = {arm: labels for (s, arm), labels in sweep_members(run).items() if s == scenario and arm in controls}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbench.report.plots import _png

    fig, ax = plt.subplots(figsize=(7, 5))
    for arm, labels in curves.items():
        mean = curve_points(long, scenario, labels).groupby("label", sort=False)[["plasticity", "forgetting"]].mean()
        line = pareto_front(mean)  # the readings use each seed's frontier; this is the mean's
        (handle,) = ax.plot(100 * line.plasticity, 100 * line.forgetting, "-", label=f"{arm} sweep (frontier)", alpha=0.8)
        ax.plot(100 * mean.plasticity, 100 * mean.forgetting, "o", color=handle.get_color(), alpha=0.8)
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
