"""The stability-gap section of a report: cells that carry an anytime curve (train.eval_every).

Writes `stability_gap.md` / `.csv` (one row per scenario and label: the metrics of
clbench.stability_gap, mean and 95% CI over seeds, and each method's paired difference in
the worst gap against the scenario's reference row, Holm-corrected per scenario) and one
`stability_gap_<scenario>.png` with the curves and the task boundaries marked.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from clbench.report.aggregate import seed_stats
from clbench.report.display import fmt_p
from clbench.report.load import LoadedRun
from clbench.report.stats import holm, paired_diff
from clbench.stability_gap import cell_gap_metrics, switch_curves

METRICS = ("gap_worst", "gap_mean", "t_trough", "t_recover", "recovered", "min_acc", "noise_floor")
IN_PP = {"gap_worst", "gap_mean", "min_acc", "noise_floor"}  # accuracies shown in percentage points
REFERENCE = "naive"  # the row every other one is compared with, when the scenario has it


def curve_cells(run: LoadedRun) -> list[dict]:
    return [c for c in run.cells if c.get("anytime")]


def gap_frame(run: LoadedRun) -> pd.DataFrame:
    """One row per cell with a curve: identity, the gap metrics and the curve's cost."""
    rows = []
    for cell in curve_cells(run):
        curve = cell["anytime"]
        train = cell["train_seconds"]
        rows.append({
            "scenario": cell["scenario"], "label": cell["label"], "seed": cell["seed"],
            **cell_gap_metrics(curve),
            "eval_every": curve.get("eval_every"), "points": len(curve["iteration"]),
            # Seconds of curve evaluation per second of training (the method's train time).
            "overhead": curve.get("seconds", math.nan) / train if train else math.nan,
        })
    return pd.DataFrame(rows)


def gap_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and CI per (scenario, label), and the paired worst-gap difference vs the reference."""
    out = []
    for (scenario, label), g in frame.groupby(["scenario", "label"], sort=False):
        row = {"scenario": scenario, "label": label, "seeds": len(g)}
        for m in METRICS:
            mean, _, ci = seed_stats(g[m].dropna()) if g[m].notna().any() else (math.nan,) * 3
            row[f"{m}_mean"], row[f"{m}_ci95"] = mean, ci
        row["overhead_mean"] = float(g["overhead"].mean())
        out.append(row)
    summary = pd.DataFrame(out)
    # the reference row first, the others by name
    summary = summary.sort_values(["scenario", "label"], key=lambda col: col.map(
        lambda v: (v != REFERENCE, v)) if col.name == "label" else col).reset_index(drop=True)
    summary["vs_reference"], summary["diff_mean"], summary["diff_ci95"], summary["p"] = "", math.nan, math.nan, math.nan
    for scenario, idx in summary.groupby("scenario").groups.items():
        sub = frame[frame["scenario"] == scenario]
        if REFERENCE not in set(sub["label"]):
            continue
        ref = dict(zip(sub[sub["label"] == REFERENCE]["seed"], sub[sub["label"] == REFERENCE]["gap_worst"], strict=True))
        for i in idx:
            label = summary.at[i, "label"]
            if label == REFERENCE:
                continue
            mine = sub[sub["label"] == label]
            d = paired_diff(dict(zip(mine["seed"], mine["gap_worst"], strict=True)), ref)
            summary.loc[i, ["vs_reference", "diff_mean", "diff_ci95", "p"]] = [REFERENCE, d.mean, d.ci95, d.p]
        summary.loc[idx, "p_holm"] = holm(summary.loc[idx, "p"].to_numpy())
    return summary


def _fmt(mean: float, ci: float, scale: float, decimals: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean * scale:.{decimals}f}"
    return text + (f" ± {ci * scale:.{decimals}f}" if np.isfinite(ci) else "")


def render_markdown(summary: pd.DataFrame, run_name: str) -> str:
    lines = [
        f"# Stability gap: {run_name}",
        "",
        "Anytime evaluation (docs/stability_gap.md): old-task accuracy = mean accuracy on the fixed test",
        "subsets of the tasks trained before the switch, read every `eval_every` iterations while the",
        "next task trains. Gap = its drop from the switch to its lowest point (worst switch, and mean",
        "over switches), in pp; trough and half-recovery in iterations after the switch (median over the",
        "switches that recovered half of their drop; 'recovered' is their share); min-ACC as De Lange et",
        "al. (2023); noise floor = the drop subset sampling alone would show. Mean ± 95% CI over seeds.",
        f"Last column: worst gap minus the `{REFERENCE}` row's, paired by seed, Holm-corrected per scenario.",
        "",
    ]
    for scenario, rows in summary.groupby("scenario", sort=True):
        lines += [f"## {scenario}", "",
                  "| method | seeds | worst gap (pp) | mean gap (pp) | trough (it) | half-recovery (it) | recovered | "
                  "min-ACC (%) | noise floor (pp) | eval cost / train time | worst gap vs naive (pp), p (Holm) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in rows.iterrows():
            versus = "reference" if r["label"] == REFERENCE else (
                "n/a" if not r["vs_reference"] or not np.isfinite(r["diff_mean"]) else
                f"{r['diff_mean'] * 100:+.1f} ± {r['diff_ci95'] * 100:.1f}, p {fmt_p(r['p'])} ({fmt_p(r['p_holm'])})")
            lines.append(
                f"| {r['label']} | {r['seeds']} | {_fmt(r['gap_worst_mean'], r['gap_worst_ci95'], 100, 1)} | "
                f"{_fmt(r['gap_mean_mean'], r['gap_mean_ci95'], 100, 1)} | {_fmt(r['t_trough_mean'], r['t_trough_ci95'], 1, 0)} | "
                f"{_fmt(r['t_recover_mean'], r['t_recover_ci95'], 1, 0)} | {_fmt(r['recovered_mean'], math.nan, 100, 0)}% | "
                f"{_fmt(r['min_acc_mean'], r['min_acc_ci95'], 100, 1)} | {_fmt(r['noise_floor_mean'], math.nan, 100, 1)} | "
                f"{r['overhead_mean'] * 100:.0f}% | {versus} |")
        lines.append("")
    return "\n".join(lines)


def _on_grid(cells: list[dict], pick) -> tuple[np.ndarray, np.ndarray]:
    """Seeds' curves interpolated onto the first seed's x values: (x, [seeds, points])."""
    x = pick(cells[0]["anytime"])[0]
    ys = []
    for cell in cells:
        xi, yi = pick(cell["anytime"])
        ys.append(np.interp(x, xi, yi))
    return x, np.array(ys)


def _first_task(curve: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(curve["iteration"], dtype=float), np.array([row[0] for row in curve["values"]], dtype=float)


def _aligned(curve: dict) -> tuple[np.ndarray, np.ndarray]:
    """Old-task accuracy against iterations since the switch, averaged over switches."""
    switches = switch_curves(curve)
    n = min(len(s["since"]) for s in switches)
    return switches[0]["since"][:n], np.mean([s["old_acc"][:n] for s in switches], axis=0)


def plot_scenario(run: LoadedRun, scenario: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbench.report.plots import _mean_ci, _png, _styles

    cells = [c for c in curve_cells(run) if c["scenario"] == scenario]
    labels = list(dict.fromkeys(c["label"] for c in cells))
    style = _styles(labels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label in labels:
        group = sorted((c for c in cells if c["label"] == label), key=lambda c: c["seed"])
        color = style[label][0]
        for ax, pick in ((left, _first_task), (right, _aligned)):
            if pick is _aligned and len(group[0]["anytime"]["boundaries"]) < 2:
                continue  # one task: no switch to align on
            x, ys = _on_grid(group, pick)
            mean, half = _mean_ci(ys * 100)
            ax.plot(x, mean, color=color, label=f"{label} (n={len(group)})", lw=1.4)
            if np.isfinite(half).any():
                ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.15, lw=0)
    for b in cells[0]["anytime"]["boundaries"][1:]:
        left.axvline(b, color="0.6", ls=":", lw=0.8)
    left.set(title="accuracy on the first task (dotted: task switches)", xlabel="training iteration",
             ylabel="accuracy (%)")
    right.set(title="old-task accuracy after a switch (mean over switches)", xlabel="iterations since the switch",
              ylabel="accuracy (%)")
    right.axvline(0, color="0.6", ls=":", lw=0.8)
    left.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{scenario}: anytime evaluation every {cells[0]['anytime']['eval_every']} iterations, "
                 "mean and 95% CI over seeds")
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return png


def write_stability_gap(run: LoadedRun, out: Path, formats: tuple[str, ...], run_name: str) -> list[Path]:
    """The section's files, or nothing when no cell has a curve."""
    frame = gap_frame(run)
    if frame.empty:
        return []
    summary = gap_summary(frame)
    paths = []
    if "md" in formats:
        path = out / "stability_gap.md"
        path.write_text(render_markdown(summary, run_name), encoding="utf-8")
        paths.append(path)
    if "csv" in formats:
        path = out / "stability_gap.csv"
        summary.to_csv(path, index=False)
        paths.append(path)
    if "png" in formats:
        for scenario in sorted(frame["scenario"].unique()):
            path = out / f"stability_gap_{scenario}.png"
            path.write_bytes(plot_scenario(run, scenario))
            paths.append(path)
    return paths
