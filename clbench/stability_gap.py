"""Stability-gap metrics of one cell's anytime curve (result["anytime"], clbench.anytime).

De Lange et al. (ICLR 2023) show that when training switches to a new task, the accuracy
on old tasks first drops sharply and then partly recovers. End-of-experience matrices see
only the end of that dip. For every task switch t >= 1 we read the *old-task accuracy*
a(s) = mean over tasks j < t of the accuracy on j's fixed test subset, at every evaluated
iteration s while experience t trains, and report (docs/stability_gap.md):

* `drop`: a(switch) - min_s a(s), the stability gap at that switch; the cell's `gap_worst`
  is the largest drop over switches, `gap_mean` their mean;
* `t_trough`: iterations from the switch to the lowest point;
* `t_recover`: iterations from the switch until a(s) regains half of the drop after the
  trough (NaN when it never does within the experience: "not recovered"; the cell's
  `recovered` is the fraction of switches that did);
* `min_acc`: De Lange's min-ACC, the mean over old tasks of the lowest accuracy the task
  had at any point after it was trained;
* `noise_floor`: the drop that subset sampling noise alone would show: the expected
  minimum of K draws of a(switch) under binomial noise on the scored samples (Blom's
  approximation), K the number of points in the experience. A drop below it is not
  evidence of a gap.

Curves store accuracies in [0, 1]; so do these metrics (reports show percentage points).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

RECOVERY_FRACTION = 0.5  # "recovered" = regained this fraction of the drop


def _values(curve: dict[str, Any]) -> np.ndarray:
    """points x tasks; tasks not yet seen (null) are NaN."""
    return np.array([[math.nan if v is None else v for v in row] for row in curve["values"]], dtype=float)


def switch_curves(curve: dict[str, Any]) -> list[dict[str, Any]]:
    """Per switch t >= 1: iterations since the switch and the old-task accuracy at each point."""
    iteration = np.asarray(curve["iteration"], dtype=float)
    experience = np.asarray(curve["experience"], dtype=int)
    values = _values(curve)
    boundaries = curve["boundaries"]
    out = []
    for t in range(1, len(boundaries)):
        mask = experience == t
        if not mask.any():
            continue
        old = values[mask][:, :t]
        out.append({
            "switch": t,
            "since": iteration[mask] - boundaries[t],
            "old_acc": np.nanmean(old, axis=1),
        })
    return out


def expected_min_z(k: int) -> float:
    """E[min of k standard normals] (Blom's approximation); 0 for a single point."""
    if k < 2:
        return 0.0
    return float(stats.norm.ppf((1 - 0.375) / (k + 0.25)))


def switch_metrics(since: np.ndarray, old_acc: np.ndarray, n_scored: int) -> dict[str, float]:
    """drop, t_trough, t_recover and noise_floor of one switch (see the module docstring)."""
    start = float(old_acc[0])
    trough_at = int(np.nanargmin(old_acc))
    trough = float(old_acc[trough_at])
    drop = start - trough
    target = trough + RECOVERY_FRACTION * drop
    later = np.nonzero(old_acc[trough_at:] >= target)[0] if drop > 0 else np.array([0])
    t_recover = float(since[trough_at + later[0]]) if later.size else math.nan
    sd = math.sqrt(max(start * (1 - start), 0.0) / max(n_scored, 1))
    return {
        "drop": drop, "t_trough": float(since[trough_at]), "t_recover": t_recover,
        "noise_floor": -expected_min_z(len(old_acc)) * sd,
    }


def min_acc(curve: dict[str, Any]) -> float:
    """Mean over tasks j < T-1 of their lowest accuracy after being trained (NaN for one task)."""
    experience = np.asarray(curve["experience"], dtype=int)
    values = _values(curve)
    lows = [np.nanmin(values[experience > j, j]) for j in range(values.shape[1]) if (experience > j).any()]
    return float(np.mean(lows)) if lows else math.nan


def cell_gap_metrics(curve: dict[str, Any]) -> dict[str, float]:
    """The cell's stability-gap summary over its switches."""
    sizes = curve.get("subset_size") or []
    rows = []
    for sw in switch_curves(curve):
        scored = int(sum(sizes[: sw["switch"]])) if sizes else 0
        rows.append(switch_metrics(sw["since"], sw["old_acc"], scored))
    if not rows:
        nan = math.nan
        return {"gap_worst": nan, "gap_mean": nan, "t_trough": nan, "t_recover": nan, "recovered": nan,
                "min_acc": min_acc(curve), "noise_floor": nan, "switches": 0}
    drops = np.array([r["drop"] for r in rows])
    recover = np.array([r["t_recover"] for r in rows])
    return {
        "gap_worst": float(drops.max()),
        "gap_mean": float(drops.mean()),
        "t_trough": float(np.mean([r["t_trough"] for r in rows])),
        "t_recover": float(np.nanmedian(recover)) if np.isfinite(recover).any() else math.nan,
        "recovered": float(np.isfinite(recover).mean()),
        "min_acc": min_acc(curve),
        "noise_floor": float(np.mean([r["noise_floor"] for r in rows])),
        "switches": len(rows),
    }
