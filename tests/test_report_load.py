"""Bad input: every problem gets a clear reason, the report covers what is valid."""

from __future__ import annotations

import json

import pytest

from clbench.errors import ClbenchError
from clbench.report import build_report, load_run
from clbench.report.synthetic import result_with_matrix, write_result

R3 = [[0.9, 0.1, 0.1], [0.7, 0.85, 0.1], [0.6, 0.7, 0.88]]


def cell(label="ewc", seed=0, scenario="split_mnist", matrix=R3, **overrides):
    return result_with_matrix(scenario, label, seed, matrix, **overrides)


def write_raw(run_dir, name, text):
    path = run_dir / "cells" / name / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def reasons(run):
    return {s.path.split("/")[1]: s.reason for s in run.skipped}


def test_missing_run_dir_raises_naming_it(tmp_path):
    with pytest.raises(ClbenchError, match="run directory not found: .*nope"):
        load_run(tmp_path / "nope")


def test_run_dir_without_results_raises_naming_it(tmp_path):
    run_dir = tmp_path / "empty_run"
    run_dir.mkdir()
    with pytest.raises(ClbenchError, match=r"no valid results in .*empty_run.*found none"):
        build_report(run_dir)


def test_only_failed_or_broken_cells_raise_with_counts(tmp_path):
    run_dir = tmp_path / "broken_run"
    write_result(run_dir, cell(status="failed", error="NonFiniteLossError: loss is nan", matrix=[]))
    write_raw(run_dir, "half", '{"schema_version": 1, "matr')
    with pytest.raises(
        ClbenchError, match=r"no valid results in .*broken_run: 2 cell.*1 failed, 1 skipped"
    ):
        build_report(run_dir)


def test_each_bad_cell_gets_a_clear_reason(tmp_path):
    run_dir = tmp_path / "run"
    write_result(run_dir, cell(seed=0))
    write_raw(run_dir, "half_written", '{"schema_version": 1, "matrix": [[0.9')
    missing = cell(seed=1)
    del missing["matrix"], missing["wall_seconds"]
    write_raw(run_dir, "missing_keys", json.dumps(missing))
    write_raw(run_dir, "future", json.dumps(cell(seed=2, schema_version=3)))
    write_raw(
        run_dir,
        "no_version",
        json.dumps({k: v for k, v in cell(seed=3).items() if k != "schema_version"}),
    )
    write_raw(run_dir, "short_matrix", json.dumps(cell(seed=4) | {"matrix": R3[:2]}))
    write_raw(run_dir, "bad_seed", json.dumps(cell(seed=5) | {"seed": "5"}))
    write_raw(run_dir, "not_object", "[1, 2]")
    write_raw(run_dir, "odd_status", json.dumps(cell(seed=6, status="running")))
    (run_dir / "cells" / "unfinished").mkdir()

    run = load_run(run_dir)
    why = reasons(run)
    assert len(run.cells) == 1
    assert why["half_written"].startswith("invalid JSON (half-written?)")
    assert why["missing_keys"].startswith("missing required key(s) wall_seconds, matrix")
    assert why["future"] == "unknown schema version 3 (this clbench reads versions 1 and 2)"
    assert "no schema_version" in why["no_version"]
    assert why["short_matrix"] == "matrix has 2 rows, expected n_experiences = 3"
    assert why["bad_seed"] == "seed must be an integer, got '5'"
    assert why["not_object"] == "not a JSON object (got list)"
    assert "unknown status 'running'" in why["odd_status"]
    assert "no result.json" in why["unfinished"]

    # The report covers the valid cell and lists every skipped one, in the file and as data.
    result = build_report(run_dir, formats="md")
    assert len(result.skipped) == 9
    text = (result.out_dir / "summary.md").read_text()
    assert "## Skipped (9)" in text
    assert "cells/future/result.json: unknown schema version 3" in text
    assert "skipped: " in result.text


def test_failed_cells_are_listed_with_their_error_not_used(tmp_path):
    run_dir = tmp_path / "run"
    for seed in (0, 1):
        write_result(run_dir, cell(seed=seed))
    err = "NonFiniteLossError: loss is nan at experience 2, iteration 17"
    write_result(run_dir, cell(seed=2, status="failed", error=err, matrix=R3[:2]))
    result = build_report(run_dir, formats=("md", "csv"))
    assert [f.error for f in result.failed] == [err]
    assert result.summary.loc[0, "n_seeds"] == 2
    text = (result.out_dir / "summary.md").read_text()
    assert "## Failed cells (not used in metrics) (1)" in text
    assert (
        f"split_mnist__ewc__seed2__{cell()['config_hash']} (split_mnist/ewc, seed 2): {err}" in text
    )


def test_mix_of_configs_keeps_the_majority_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    for seed in (0, 1, 2):
        write_result(run_dir, cell(seed=seed, config_hash="aaaaaaaaaa"))
    write_result(run_dir, cell(seed=3, config_hash="bbbbbbbbbb"))
    run = load_run(run_dir)
    assert {c["config_hash"] for c in run.cells} == {"aaaaaaaaaa"}
    (skipped,) = run.skipped
    assert "bbbbbbbbbb" in skipped.path
    assert skipped.reason.startswith(
        "mix of configs for the same strategy name: split_mnist/ewc has config_hash "
        "bbbbbbbbbb (1 cell(s)) and aaaaaaaaaa (3 cell(s)); kept aaaaaaaaaa."
    )


def test_config_tie_keeps_the_smallest_hash(tmp_path):
    run_dir = tmp_path / "run"
    write_result(run_dir, cell(seed=0, config_hash="ffffffffff"))
    write_result(run_dir, cell(seed=1, config_hash="0000000000"))
    run = load_run(run_dir)
    assert [c["config_hash"] for c in run.cells] == ["0000000000"]


def test_duplicate_seed_and_metric_mismatch_are_skipped(tmp_path):
    run_dir = tmp_path / "run"
    write_result(run_dir, cell(seed=0))
    dup = cell(seed=0)
    write_raw(run_dir, "zz_copy_of_seed0", json.dumps(dup))
    write_result(run_dir, cell(label="naive", seed=0))
    write_result(run_dir, cell(label="si", seed=0, metric_name="bpc", higher_is_better=False))
    why = reasons(load_run(run_dir))
    assert why["zz_copy_of_seed0"] == "duplicate seed 0 for split_mnist/ewc"
    si = next(v for k, v in why.items() if "__si__" in k)
    assert si == (
        "scenario split_mnist mixes metrics: this cell has bpc (lower is better, T=3), "
        "2 other cell(s) have accuracy (higher is better, T=3); kept those"
    )


def test_single_seed_is_n1_with_na_spread(tmp_path):
    run_dir = tmp_path / "run"
    write_result(run_dir, cell(label="naive", seed=0))
    write_result(run_dir, cell(label="ewc", seed=0))
    result = build_report(run_dir, formats=("md", "csv"))
    text = (result.out_dir / "summary.md").read_text()
    assert "| naive | 1 | 72.67 ± n/a |" in text
    assert "split_mnist/ewc: only 1 seed (n=1): no standard deviation, CI or t-test" in result.notes
    assert result.summary["acc_ci95"].isna().all()
