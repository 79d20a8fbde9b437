"""The runner and results store: matrix protocol, failures, resume, conflicts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from clbench.errors import RunDirConflictError
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.store import atomic_write_json, existing_cell_ids, result_path
from clbench.suite import run_suite

PMNIST_TINY = {"scenario.n_experiences": 3, "scenario.train_per_exp": 128, "scenario.test_per_exp": 100}
REQUIRED_KEYS = {
    "scenario", "strategy", "seed", "config", "metric_name", "higher_is_better", "matrix", "initial",
    "train_seconds", "eval_seconds", "wall_seconds", "peak_rss_mb", "peak_device_mb", "num_params", "env",
    "status", "error", "schema_version", "cell_id", "n_test", "scenario_info",
}


def tiny(strategy="naive", seed=0, scenario="pmnist", **extra):
    overrides = dict(PMNIST_TINY) if scenario == "pmnist" else {"scenario.train_per_exp": 100, "scenario.test_per_exp": 60}
    overrides.update(extra)
    return resolve_config(scenario, strategy, seed=seed, profile="smoke", overrides=overrides)


def test_cell_result_has_full_matrix_and_schema(tmp_path, data_root):
    result = run_cell(tiny("naive"), tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "ok", result["traceback"]
    stored = json.loads(result_path(tmp_path, result["cell_id"]).read_text())
    assert REQUIRED_KEYS <= set(stored)
    assert len(stored["matrix"]) == 3 and all(len(row) == 3 for row in stored["matrix"])
    assert len(stored["initial"]) == 3 and stored["n_test"] == [100, 100, 100]
    assert all(0.0 <= v <= 1.0 for row in stored["matrix"] for v in row)
    assert stored["config"]["scenario_args"]["n_experiences"] == 3
    assert stored["env"]["avalanche"] == "0.6.0" and stored["num_params"] > 0
    assert stored["env"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and stored["env"]["cpu"]
    # Which install made it: the committed lock's SHA-256, and that this venv matches the lock.
    lock = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"
    assert stored["env"]["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert stored["env"]["lock_matches_install"] is True, stored["env"].get("lock_mismatches")
    assert len(stored["scenario_info"]["domains"]) == 3  # one permutation checksum per experience
    # The untrained model is near chance on 10 classes; training on experience 0 lifts column 0.
    assert stored["matrix"][0][0] > stored["initial"][0]


def test_same_seed_gives_identical_matrices(tmp_path, data_root):
    a = run_cell(tiny("replay"), tmp_path / "a", data_root=data_root, progress=False)
    b = run_cell(tiny("replay"), tmp_path / "b", data_root=data_root, progress=False)
    assert a["matrix"] == b["matrix"] and a["initial"] == b["initial"]


def test_seed_fixes_permutations_and_class_orders(tmp_path, data_root):
    a = run_cell(tiny("naive", seed=1), tmp_path, data_root=data_root, progress=False)
    b = run_cell(tiny("naive", seed=2), tmp_path, data_root=data_root, progress=False)
    assert a["scenario_info"]["domains"] != b["scenario_info"]["domains"]
    c = run_cell(tiny("naive", seed=1, scenario="split_mnist"), tmp_path, data_root=data_root, progress=False)
    d = run_cell(tiny("naive", seed=1, scenario="split_mnist"), tmp_path / "again", data_root=data_root, progress=False)
    order = c["scenario_info"]["class_order"]
    assert sorted(order) == list(range(10)) and order == d["scenario_info"]["class_order"]
    assert c["scenario_info"]["classes_per_exp"][0] == order[:2]


def test_joint_fills_every_row_with_its_single_evaluation(tmp_path, data_root):
    result = run_cell(tiny("joint"), tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "ok"
    assert all(row == result["matrix"][0] for row in result["matrix"])


def test_nan_loss_fails_the_cell_with_a_clear_error(tmp_path, data_root):
    # An absurd learning rate makes SGD diverge within a few iterations.
    result = run_cell(tiny("naive", lr=1e30), tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "failed"
    assert result["error"].startswith("NonFiniteLossError: loss is")
    assert "at experience 0" in result["error"]
    assert json.loads(result_path(tmp_path, result["cell_id"]).read_text())["status"] == "failed"


def test_a_failing_cell_does_not_lose_the_others(tmp_path, data_root):
    cells = [tiny("naive"), tiny("naive", lr=1e30), tiny("ewc")]
    cells[1].label = "diverging"
    outcome = run_suite(cells, tmp_path, data_root=data_root, progress=False)
    assert len(outcome.ok) == 2 and len(outcome.failed) == 1
    assert "NonFiniteLossError" in outcome.failed[0][1]
    assert len(existing_cell_ids(tmp_path)) == 3


def test_resume_skips_completed_cells_and_reruns_failed_ones(tmp_path, data_root):
    cells = [tiny("naive"), tiny("naive", seed=1)]
    first = run_suite(cells, tmp_path, data_root=data_root, progress=False)
    assert len(first.ok) == 2
    done = result_path(tmp_path, first.ok[0])
    mtime = done.stat().st_mtime_ns
    # Pretend the second cell crashed half way: its result is a failed record.
    failed = result_path(tmp_path, first.ok[1])
    record = json.loads(failed.read_text()) | {"status": "failed", "error": "killed"}
    atomic_write_json(failed, record)
    second = run_suite(cells, tmp_path, data_root=data_root, progress=False)
    assert second.skipped == 1 and second.ok == [first.ok[1]]
    assert done.stat().st_mtime_ns == mtime  # not recomputed, not rewritten


def test_changed_config_in_same_run_dir_is_refused(tmp_path, data_root):
    run_suite([tiny("ewc")], tmp_path, data_root=data_root, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("result.json")}
    with pytest.raises(RunDirConflictError, match="config changed.*Use a new --out"):
        run_suite([tiny("ewc", **{"strategy.ewc_lambda": 3.0})], tmp_path, data_root=data_root, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("result.json")} == before


def test_atomic_write_leaves_no_temp_files_and_replaces_whole(tmp_path):
    path = tmp_path / "cells" / "x" / "result.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2, "b": [float("nan")]})
    assert json.loads(path.read_text())["a"] == 2
    assert os.listdir(path.parent) == ["result.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = Path(tmp_path) / "result.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["result.json"]
