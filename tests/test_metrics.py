"""clbench.metrics on hand-computed matrices (expected values worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clbench import metrics as M

NAN = float("nan")

# docs/avalanche_and_anchors.md §4.2, with an upper triangle so that FWT is defined.
WORKED = [
    [0.90, 0.12, 0.08],
    [0.95, 0.80, 0.11],
    [0.70, 0.60, 0.90],
]
WORKED_B = [0.10, 0.10, 0.10]
WORKED_JOINT = [0.97, 0.95, 0.96]


def approx(x):
    return pytest.approx(x, abs=1e-12)


def test_worked_example_every_metric():
    R = M.as_matrix(WORKED)
    assert M.final_average(R) == approx((0.70 + 0.60 + 0.90) / 3)
    assert M.seen_average(R).tolist() == approx([0.90, (0.95 + 0.80) / 2, (0.70 + 0.60 + 0.90) / 3])
    assert M.average_incremental(R) == approx((0.90 + 0.875 + 2.2 / 3) / 3)
    assert M.backward_transfer(R) == approx(((0.70 - 0.90) + (0.60 - 0.80)) / 2)
    assert M.forward_transfer(R, WORKED_B) == approx(((0.12 - 0.10) + (0.11 - 0.10)) / 2)
    assert M.forgetting_per_experience(R).tolist() == approx([0.25, 0.20])
    assert M.average_forgetting(R) == approx(0.225)
    assert M.avalanche_forgetting(R) == approx(0.200)
    assert M.learning_accuracy(R) == approx((0.90 + 0.80 + 0.90) / 3)
    assert M.intransigence_per_experience(R, WORKED_JOINT).tolist() == approx([0.07, 0.15, 0.06])
    assert M.intransigence(R, WORKED_JOINT) == approx((0.07 + 0.15 + 0.06) / 3)


def test_chaudhry_vs_avalanche_documented_relation():
    """chaudhry >= avalanche always; equal when R[j][j] is the max of column j over rows j..T-2."""
    R = M.as_matrix(WORKED)
    assert M.average_forgetting(R) == approx(0.225)
    assert M.avalanche_forgetting(R) == approx(0.200)
    # Avalanche forgetting is GEM's BWT with the sign flipped.
    assert M.avalanche_forgetting(R) == approx(-M.backward_transfer(R))

    rng = np.random.default_rng(0)
    for T in range(2, 9):
        for _ in range(50):
            R = rng.uniform(0, 1, size=(T, T))
            assert M.average_forgetting(R) >= M.avalanche_forgetting(R) - 1e-12
            # Make every column non-increasing below the diagonal: no experience ever
            # improves after it is learned, so the max is R[j][j] and both agree.
            for j in range(T):
                R[j:, j] = np.sort(R[j:, j])[::-1]
            assert M.average_forgetting(R) == approx(M.avalanche_forgetting(R))


def test_single_experience_gives_nan_not_a_crash():
    R = M.as_matrix([[0.8]])
    assert M.final_average(R) == approx(0.8)
    assert M.average_incremental(R) == approx(0.8)
    assert M.learning_accuracy(R) == approx(0.8)
    for value in (
        M.backward_transfer(R),
        M.forward_transfer(R, [0.1]),
        M.average_forgetting(R),
        M.avalanche_forgetting(R),
    ):
        assert math.isnan(value)
    assert M.forgetting_per_experience(R).tolist() == []
    out = M.cell_metrics({"matrix": [[0.8]], "initial": [0.1], "higher_is_better": True})
    assert out["forgetting_per_exp"] == [] and math.isnan(out["bwt"]) and out["acc"] == approx(0.8)


def test_two_experiences():
    R = M.as_matrix([[0.9, 0.2], [0.6, 0.85]])
    b = [0.1, 0.15]
    assert M.final_average(R) == approx(0.725)
    assert M.average_incremental(R) == approx((0.9 + 0.725) / 2)
    assert M.backward_transfer(R) == approx(-0.3)
    assert M.forward_transfer(R, b) == approx(0.05)
    assert M.average_forgetting(R) == approx(0.3)
    assert M.avalanche_forgetting(R) == approx(0.3)
    assert M.learning_accuracy(R) == approx(0.875)


def test_lower_is_better_flips_differences_not_levels():
    # bits per character: lower is better; exp 0 improved to 1.4, then rose to 1.9.
    L = M.as_matrix([[1.5, 5.0, 5.0], [1.4, 1.6, 5.0], [1.9, 1.8, 1.55]])
    b = [8.0, 8.0, 8.0]
    assert M.final_average(L) == approx((1.9 + 1.8 + 1.55) / 3)
    assert M.learning_accuracy(L) == approx((1.5 + 1.6 + 1.55) / 3)
    # Forgetting = rise above the best (lowest) earlier value: 1.9 - 1.4 and 1.8 - 1.6.
    assert M.forgetting_per_experience(L, False).tolist() == approx([0.5, 0.2])
    assert M.average_forgetting(L, False) == approx(0.35)
    # BWT: the loss on old experiences went up by 0.4 and 0.2, so BWT is negative (worse).
    assert M.backward_transfer(L, False) == approx(-0.3)
    # FWT: 5.0 on unseen experiences beats the untrained 8.0, so it is positive (better).
    assert M.forward_transfer(L, b, False) == approx(3.0)
    assert M.avalanche_forgetting(L, False) == approx(0.3)
    assert M.average_forgetting(L, False) >= M.avalanche_forgetting(L, False)
    # Intransigence: right after learning, the loss is above joint's by 0.05, 0.1, 0.05.
    assert M.intransigence(L, [1.45, 1.5, 1.5], False) == approx(0.2 / 3)


def test_nan_entries_propagate_only_where_used():
    R = [row[:] for row in WORKED]
    R[1][0] = NAN  # used by forgetting of exp 0 and by A_1, not by ACC or BWT
    R = M.as_matrix(R)
    assert math.isnan(M.forgetting_per_experience(R)[0])
    assert M.forgetting_per_experience(R)[1] == approx(0.20)
    assert math.isnan(M.average_forgetting(R))
    assert math.isnan(M.average_incremental(R))
    assert M.final_average(R) == approx(2.2 / 3)
    assert M.backward_transfer(R) == approx(-0.2)
    assert M.learning_accuracy(R) == approx(2.6 / 3)

    # JSON null in the last row: everything reading the final row is NaN.
    out = M.cell_metrics({"matrix": [[0.9, 0.1], [None, 0.8]], "initial": [0.1, 0.1]})
    assert math.isnan(out["acc"]) and math.isnan(out["bwt"]) and math.isnan(out["forgetting"])
    assert out["plasticity"] == approx(0.85)
    assert out["fwt"] == approx(0.0)


def test_cell_metrics_keys_costs_and_joint():
    result = {
        "matrix": WORKED,
        "initial": WORKED_B,
        "higher_is_better": True,
        "wall_seconds": 12.5,
        "train_seconds": 10,
        "eval_seconds": 2.0,
        "peak_rss_mb": 1500.0,
        "num_params": 1234,
    }
    out = M.cell_metrics(result, joint_final=WORKED_JOINT)
    assert set(M.SCALAR_METRICS) | set(M.COST_FIELDS) <= set(out)
    assert out["forgetting"] == approx(0.225)
    assert out["avalanche_forgetting"] == approx(0.2)
    assert out["intransigence"] == approx(0.28 / 3)
    assert out["forgetting_per_exp"] == approx([0.25, 0.20])
    assert out["wall_seconds"] == 12.5 and out["train_seconds"] == 10.0
    assert math.isnan(out["peak_device_mb"])  # absent: NaN, not an error
    assert math.isnan(M.cell_metrics(result)["intransigence"])  # no joint reference


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="square"):
        M.as_matrix([[0.1, 0.2]])
    with pytest.raises(ValueError, match="initial"):
        M.cell_metrics({"matrix": [[0.1]], "initial": [0.1, 0.2]})
