"""The Python API (docs/api.md): clbench.run / load / summary, and that the CLI and report use them."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import clbench
from clbench.cli import main
from clbench.errors import ClbenchError
from clbench.report.frames import FRAME_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
# pmnist smoke with 2 experiences: a cell takes well under a second, and its matrix is not
# symmetric (unlike split_mnist's, whose off-diagonal is 0), so an i/j mix-up shows.
SMALL = {"scenario.n_experiences": 2}
SUITE = """name = "api_test"
profile = "smoke"
seeds = [0, 1]
scenarios = ["pmnist"]
strategies = ["naive", "ewc"]
set = { "scenario.n_experiences" = 2 }

[strategy_args.ewc]
ewc_lambda = 3.0
"""


def bench(tmp_path: Path, data_root: Path, capsys) -> Path:
    """`clbench bench` of SUITE (4 cells, T = 2); returns its run dir."""
    (tmp_path / "suite.toml").write_text(SUITE)
    run_dir = tmp_path / "bench"
    code = main(["bench", str(tmp_path / "suite.toml"), "--out", str(run_dir), "-q", "--data-root", str(data_root)])
    capsys.readouterr()
    assert code == 0
    return run_dir


def stored(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def test_docs_example_runs_as_written(tmp_path, data_root, monkeypatch, capsys):
    text = (ROOT / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLBENCH_DATA", str(data_root))  # the example relies on the default data root
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    assert namespace["result"].ok and namespace["result"].matrix.shape == (5, 5)
    assert len(namespace["frame"]) == 3 * 6 * 5  # the count the example's comment states
    assert list(namespace["table"]["label"]) == ["naive", "ewc"]
    assert len(list((tmp_path / "runs" / "api_demo" / "cells").iterdir())) == 3
    assert "Result(split_mnist__ewc__seed0__" in capsys.readouterr().out


def test_run_stores_what_the_cli_stores(tmp_path, data_root, capsys):
    code = main(["run", "--scenario", "pmnist", "--strategy", "ewc", "--profile", "smoke", "-q",
                 "--set", "scenario.n_experiences=2", "--set", "strategy.ewc_lambda=3.0",
                 "--data-root", str(data_root), "--out", str(tmp_path / "cli")])
    assert code == 0
    (cli_file,) = (tmp_path / "cli").glob("cells/*/result.json")
    result = clbench.run("pmnist", "ewc", profile="smoke", out=tmp_path / "api", overrides=SMALL,
                         strategy__ewc_lambda=3.0, data_root=data_root, progress=False)
    cli = stored(cli_file)
    assert result.path == tmp_path / "api" / cli_file.relative_to(tmp_path / "cli")
    assert (result.cell_id, result.config_hash, result.config) == (cli["cell_id"], cli["config_hash"], cli["config"])
    assert result.matrix.to_numpy().tolist() == cli["matrix"] and result.initial == cli["initial"]
    assert result.acc == np.mean(cli["matrix"][-1]) and result.num_params == cli["num_params"]
    # The line `clbench run` printed is the API's metrics, to its 4 decimals.
    assert f"{result.cell_id}: ACC {result.acc:.4f}  forgetting {result.forgetting:.4f}" in capsys.readouterr().out


def test_cli_run_calls_the_api(tmp_path, data_root, monkeypatch, capsys):
    """`clbench run` is clbench.api.run plus printing, not a second copy of it."""
    import clbench.api

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    real = clbench.api.run
    monkeypatch.setattr(clbench.api, "run", spy)
    assert main(["run", "--scenario", "split_mnist", "--strategy", "naive", "--profile", "smoke", "-q",
                 "--set", "scenario.n_experiences=2", "--data-root", str(data_root), "--out", str(tmp_path)]) == 0
    assert len(calls) == 1 and calls[0]["overrides"] == SMALL and calls[0]["check"] is False


@pytest.mark.parametrize(
    # The API's arguments beyond split_mnist/ewc/smoke, the same as `clbench run` flags, and how
    # the message starts (pinned: the CLI calls the API, so comparing the two alone proves little).
    "kwargs, flags, start",
    [
        ({"strategy": "ewcc"}, [], "unknown strategy 'ewcc'; valid strategys: agem"),
        ({"scenario": "pmnist", "strategy": "icarl"}, [], "strategy 'icarl' does not support domain_il"),
        ({"bogus": 1}, ["--set", "bogus=1"], "unknown config key 'bogus' in --set; valid keys: label"),
        ({"lr": "abc"}, ["--set", "lr=abc"], "bad value for --set lr: 'abc' is not a number"),
        ({"strategy__ewc_lamda": 1.0}, ["--set", "strategy.ewc_lamda=1.0"],
         "unknown strategy 'ewc' option(s) ewc_lamda; valid: ewc_lambda"),
        ({"overrides": {"scenario.n_experiences": "two"}}, ["--set", "scenario.n_experiences=two"],
         "bad value for scenario 'split_mnist'.n_experiences: 'two' is not an integer"),
        ({"seed": -1}, ["--seed", "-1"], "bad seed -1"),
    ],
)
def test_bad_input_raises_the_cli_error_text(kwargs, flags, start, tmp_path, capsys):
    args = {"scenario": "split_mnist", "strategy": "ewc", "profile": "smoke", **kwargs}
    argv = ["run", "--scenario", args["scenario"], "--strategy", args["strategy"], "--profile", "smoke", *flags]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 2
    cli_err = capsys.readouterr().err
    with pytest.raises(ClbenchError) as exc:
        clbench.run(**args, out=tmp_path / "api", progress=False)
    assert cli_err == f"clbench: error: {exc.value}\n" and str(exc.value).startswith(start)
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()


def test_a_key_given_twice_is_refused():
    with pytest.raises(ClbenchError, match=r"config key 'strategy.ewc_lambda' given twice"):
        clbench.run("split_mnist", "ewc", overrides={"strategy.ewc_lambda": 1.0}, strategy__ewc_lambda=2.0)


def test_a_failed_cell_raises_and_is_stored(tmp_path, capsys):
    empty = tmp_path / "no_data"
    with pytest.raises(clbench.CellFailedError) as exc:
        clbench.run("split_mnist", "naive", profile="smoke", out=tmp_path / "run", data_root=empty,
                    download=False, progress=False)
    failed = exc.value.result
    assert exc.value.exit_code == 1 and str(exc.value).count("\n") == 0
    assert "DataNotFoundError" in str(exc.value) and failed.path.is_file() and failed.status == "failed"
    assert failed.matrix is None and math.isnan(failed.acc) and failed.num_params is None
    again = clbench.run("split_mnist", "naive", profile="smoke", out=tmp_path / "run", data_root=empty,
                        download=False, progress=False, check=False)
    assert not again.ok and again.error == failed.error
    code = main(["run", "--scenario", "split_mnist", "--strategy", "naive", "--profile", "smoke", "-q",
                 "--no-download", "--data-root", str(empty), "--out", str(tmp_path / "run")])
    assert code == 1 and f"  FAILED {failed.cell_id}: {failed.error}" in capsys.readouterr().out


def test_default_out_is_a_new_temporary_dir_per_call(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = dict(profile="smoke", data_root=tmp_path / "no_data", download=False, progress=False, check=False)
    first = clbench.run("split_mnist", "naive", **args)
    second = clbench.run("split_mnist", "naive", lr=0.5, **args)  # another config: no "config changed" refusal
    assert first.run_dir != second.run_dir and {first.run_dir.parent, second.run_dir.parent} == {tmp_path}
    assert first.path.is_file() and second.path.is_file()


def test_load_is_one_row_per_cell_i_j_with_the_config(tmp_path, data_root, capsys):
    run_dir = bench(tmp_path, data_root, capsys)
    clbench.run("pmnist", "naive", profile="smoke", out=run_dir, label="nodata", overrides=SMALL,
                data_root=tmp_path / "no_data", download=False, progress=False, check=False)
    frame = clbench.load(run_dir)
    T, n_cells = 2, 4  # the failed cell is not a row
    assert len(frame) == n_cells * (T + 1) * T
    assert list(frame.columns[: len(FRAME_COLUMNS)]) == FRAME_COLUMNS
    assert sorted(frame["i"].unique()) == [-1, 0, 1] and sorted(frame["j"].unique()) == [0, 1]
    assert len(frame.attrs["failed"]) == 1 and "nodata" in frame.attrs["failed"][0] and frame.attrs["skipped"] == []
    for path in run_dir.glob("cells/*__seed*/result.json"):
        data = stored(path)
        if data["status"] != "ok":
            continue
        assert data["matrix"][0][1] != data["matrix"][1][0]  # else the next check could not tell i from j
        cell = frame[frame["cell_id"] == data["cell_id"]].set_index(["i", "j"])["value"]
        assert [cell[(-1, j)] for j in range(T)] == data["initial"]
        assert [[cell[(i, j)] for j in range(T)] for i in range(T)] == data["matrix"]  # i: trained through
    ewc = frame[frame["label"] == "ewc"]
    naive = frame[frame["label"] == "naive"]
    assert (ewc["config.strategy_args.ewc_lambda"] == 3.0).all() and naive["config.strategy_args.ewc_lambda"].isna().all()
    assert (frame["config.scenario_args.n_experiences"] == 2).all() and frame["config.train.lr"].notna().all()
    assert set(frame["config.plugins"]) == {()}  # lists as tuples: groupable
    assert "config.tuning" not in frame and "config.strategy_args" not in frame  # empty tables: no column


def test_load_of_a_run_without_cells_is_empty_and_a_missing_dir_raises(tmp_path):
    frame = clbench.load(tmp_path)
    assert frame.empty and list(frame.columns) == FRAME_COLUMNS
    with pytest.raises(ClbenchError, match="run directory not found"):
        clbench.load(tmp_path / "nope")


def test_summary_is_the_summary_csv_bench_writes(tmp_path, data_root, capsys):
    run_dir = bench(tmp_path, data_root, capsys)
    table = clbench.summary(run_dir)
    csv = pd.read_csv(run_dir / "summary.csv")
    assert list(table["label"]) == ["naive", "ewc"] and (table["n_seeds"] == 2).all()
    pd.testing.assert_frame_equal(table, csv, check_dtype=False, rtol=1e-9)


def test_the_report_reads_matrices_from_the_load_frame(tmp_path, data_root, capsys, monkeypatch):
    """The report's metrics come from the frame clbench.load returns: change the frame, the summary follows."""
    import clbench.report.aggregate as aggregate

    run_dir = bench(tmp_path, data_root, capsys)
    before = clbench.summary(run_dir)
    real = aggregate.matrix_frame

    def shifted(run):
        frame = real(run)
        frame["value"] += 1.0
        return frame

    monkeypatch.setattr(aggregate, "matrix_frame", shifted)
    after = clbench.summary(run_dir)
    np.testing.assert_allclose(after["acc_mean"], before["acc_mean"] + 1.0)


def test_import_clbench_stays_light():
    code = ("import sys, clbench; heavy = [m for m in ('torch', 'pandas', 'avalanche', 'clbench.api') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(clbench.run); "
            "assert 'pandas' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_curves_is_one_row_per_cell_point_and_seen_task(tmp_path, data_root, capsys):
    import clbench

    out = tmp_path / "run"
    result = clbench.run("pmnist", "naive", profile="smoke", out=out, progress=False, data_root=data_root,
                         overrides={"train.eval_every": 4, "train.eval_subset": 1000, "scenario.train_per_exp": 128})
    clbench.run("pmnist", "ewc", profile="smoke", out=out, progress=False, data_root=data_root,
                overrides={"scenario.train_per_exp": 128})  # no curve: no rows
    curve = result.data["anytime"]
    frame = clbench.curves(out)
    assert set(frame["label"]) == {"naive"}
    # seen tasks only: 1 at points of experience 0, 2 of experience 1, ...
    assert len(frame) == sum(e + 1 for e in curve["experience"])
    last = frame[frame.iteration == curve["iteration"][-1]]
    assert last.sort_values("j")["value"].tolist() == result.data["matrix"][-1]
    first_points = frame[(frame.j == 0)].sort_values(["iteration", "experience"])["value"].tolist()
    assert first_points == [v[0] for v in curve["values"]]
