"""Stability-gap metrics (clbench.stability_gap) on hand-built curves, and the report section."""

from __future__ import annotations

import json
import math

import pytest

from clbench.stability_gap import cell_gap_metrics, expected_min_z, min_acc, switch_metrics

# Three tasks, 4 iterations each, read every 2 iterations (and at each switch).
# Switch 1 (task 0 old): 0.9 -> 0.5 -> 0.8   (drop 0.4, trough at 2, half recovery (0.7) at 4)
# Switch 2 (tasks 0, 1 old): mean 0.8 -> 0.75 -> 0.7   (drop 0.1, trough at 4, never recovers)
CURVE = {
    "eval_every": 2,
    "subset_size": [100, 100, 100],
    "boundaries": [0, 4, 8],
    "iteration": [0, 2, 4, 6, 8, 8, 10, 12],
    "experience": [0, 0, 1, 1, 1, 2, 2, 2],
    "values": [
        [0.1, None, None], [0.6, None, None], [0.9, 0.1, None], [0.5, 0.7, None], [0.8, 0.9, None],
        [0.8, 0.8, 0.1], [0.7, 0.8, 0.5], [0.6, 0.8, 0.9],
    ],
}


def test_cell_metrics_by_hand():
    m = cell_gap_metrics(CURVE)
    assert m["switches"] == 2
    assert m["gap_worst"] == pytest.approx(0.4)
    assert m["gap_mean"] == pytest.approx((0.4 + 0.1) / 2)
    assert m["t_trough"] == pytest.approx((2 + 4) / 2)
    assert m["t_recover"] == pytest.approx(4)  # the one switch that recovered half its drop
    assert m["recovered"] == pytest.approx(0.5)
    # task 0's lowest after training on it: 0.5; task 1's: 0.8
    assert m["min_acc"] == pytest.approx((0.5 + 0.8) / 2) == min_acc(CURVE)


def test_switch_metrics_edge_cases():
    import numpy as np

    flat = switch_metrics(np.array([0, 2, 4]), np.array([0.8, 0.8, 0.8]), 100)
    assert flat["drop"] == 0 and flat["t_recover"] == 0  # nothing to recover from
    rising = switch_metrics(np.array([0, 2]), np.array([0.5, 0.9]), 100)
    assert rising["drop"] == 0 and rising["t_trough"] == 0
    never = switch_metrics(np.array([0, 2, 4]), np.array([0.9, 0.8, 0.5]), 100)
    assert never["drop"] == pytest.approx(0.4) and never["t_trough"] == 4 and math.isnan(never["t_recover"])


def test_noise_floor_is_the_expected_minimum_of_binomial_noise():
    import numpy as np

    assert expected_min_z(1) == 0.0
    # Blom's approximation against a simulation of the minimum of 16 standard normals
    sims = np.random.default_rng(0).standard_normal((200_000, 16)).min(axis=1).mean()
    assert expected_min_z(16) == pytest.approx(sims, abs=0.02)
    m = switch_metrics(np.zeros(16), np.full(16, 0.9), 400)
    assert m["noise_floor"] == pytest.approx(-expected_min_z(16) * math.sqrt(0.9 * 0.1 / 400))


def _result(label, seed, curve):
    T = 3
    return {
        "schema_version": 2, "status": "ok", "cell_id": f"pmnist__{label}__seed{seed}__h{label}",
        "scenario": "pmnist", "strategy": label, "label": label, "config_hash": f"h{label}",
        "metric_name": "accuracy", "train_seconds": 10.0, "eval_seconds": 1.0, "wall_seconds": 12.0,
        "peak_rss_mb": 1.0, "num_params": 10, "seed": seed, "higher_is_better": True, "n_experiences": T,
        "matrix": [[0.9, 0.1, 0.1], [0.8, 0.9, 0.1], [0.6, 0.8, 0.9]], "initial": [0.1] * T,
        "anytime": dict(curve, seconds=1.0),
    }


def test_report_writes_the_section_with_paired_differences(tmp_path):
    from clbench.report import build_report

    shallow = json.loads(json.dumps(CURVE))
    for row in shallow["values"][3:5]:
        row[0] = 0.85  # task 0 barely dips: a drop of 0.05 at switch 1
    run = tmp_path / "run"
    for seed in range(3):
        for label, curve in (("naive", CURVE), ("replay", shallow)):
            r = _result(label, seed, curve)
            path = run / "cells" / r["cell_id"] / "result.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(r))
    out = build_report(run, tmp_path / "report", formats=("md", "csv", "png"))
    names = {p.name for p in out.paths}
    assert {"stability_gap.md", "stability_gap.csv", "stability_gap_pmnist.png"} <= names
    text = (tmp_path / "report" / "stability_gap.md").read_text()
    assert "| naive | 3 | 40.0 ± 0.0 |" in text
    # replay's worst gap: max(0.9 - 0.85, 0.1) = 0.1, paired difference -30 pp on every seed
    assert "| replay | 3 | 10.0 ± 0.0 |" in text and "-30.0 ± 0.0" in text
    assert "| 10% |" in text  # 1 s of curve per 10 s of training


def test_no_section_without_curves(tmp_path):
    from clbench.report import build_report

    run = tmp_path / "run"
    r = _result("naive", 0, CURVE)
    del r["anytime"]
    path = run / "cells" / r["cell_id"] / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(r))
    out = build_report(run, tmp_path / "report", formats=("md", "csv"))
    assert not any(p.name.startswith("stability_gap") for p in out.paths)
