"""HOLM.md for committed reports whose cells are not in the repo (clbench/report/addendum.py)."""

from __future__ import annotations

import math

import pandas as pd

from clbench.report.addendum import addendum, family


def summary() -> pd.DataFrame:
    nan = math.nan
    return pd.DataFrame([
        {"scenario": "s", "label": "naive", "best_baseline": "b", "p_acc_vs_naive": nan, "p_forgetting_vs_naive": nan,
         "p_acc_vs_best": 0.01},
        {"scenario": "s", "label": "a", "best_baseline": "b", "p_acc_vs_naive": 0.02, "p_forgetting_vs_naive": 0.0,
         "p_acc_vs_best": 0.04},
        {"scenario": "s", "label": "b", "best_baseline": "a", "p_acc_vs_naive": 0.03, "p_forgetting_vs_naive": nan,
         "p_acc_vs_best": 0.04},  # the same a-b test as the row above: counted once
    ])


def test_family_counts_each_pair_once():
    tests = family(summary())
    assert tests == {("naive", "b", "acc"): 0.01, ("a", "naive", "acc"): 0.02, ("a", "naive", "forgetting"): 0.0,
                     ("a", "b", "acc"): 0.04}


def test_holm_by_hand_and_zero_variance_left_out(tmp_path):
    summary().to_csv(tmp_path / "summary.csv", index=False)
    text = addendum(tmp_path)
    # Family of 3 live tests (p = 0 is a zero-variance artefact): sorted 0.01, 0.02, 0.04 ->
    # Holm 3 x 0.01 = 0.03, max(0.03, 2 x 0.02) = 0.04, max(0.04, 1 x 0.04) = 0.04.
    assert "## s (3 tests in the family)" in text
    assert "| naive | b | acc | 0.0100 | 0.0300 |" in text
    assert "| a | naive | acc | 0.0200 | 0.0400 |" in text
    assert "| a | b | acc | 0.0400 | 0.0400 |" in text
    assert "| a | naive | forgetting | 0.0000 | zero variance |" in text
    assert "Raw p < 0.05: 3; Holm p < 0.05: 3." in text
