"""The command line: listing, one-cell runs, the plugin guide's example, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "scenario.n_experiences=2", "--set", "scenario.train_per_exp=96", "--set", "scenario.test_per_exp=64"]


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_one_line_descriptions(capsys):
    code, out, _ = run_cli(["list", "strategies"], capsys)
    assert code == 0
    assert re.search(r"^\s+icarl\s+\[class_il\] iCaRL", out, re.M)
    assert re.search(r"^\s+ewc\s+\[class_il, task_il, domain_il\] EWC", out, re.M)
    code, out, _ = run_cli(["list", "scenarios"], capsys)
    assert "pmnist" in out and "split_cifar100_til" in out and "[domain_il]" in out


def test_run_writes_a_result_and_prints_metrics(tmp_path, data_root, capsys):
    code, out, _ = run_cli(["run", "--scenario", "pmnist", "--strategy", "naive", "--profile", "smoke", "-q",
                            "--data-root", str(data_root), "--out", str(tmp_path), *TINY], capsys)
    assert code == 0, out
    assert re.search(r"pmnist__naive__seed0__\w+: ACC \d\.\d{4}", out)
    (result_file,) = tmp_path.glob("cells/*/result.json")
    assert json.loads(result_file.read_text())["config"]["scenario_args"]["n_experiences"] == 2


def plugin_example(tmp_path) -> Path:
    """The first Python block of docs/plugins.md, exactly as a user would save it."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "l2_anchor.py"
    path.write_text(code)
    return path


def test_plugin_guide_example_runs_through_clbench_run(tmp_path, data_root, capsys):
    path = plugin_example(tmp_path)
    code, out, err = run_cli(["run", "--plugin", str(path), "--strategy", "l2_anchor", "--scenario", "pmnist",
                              "--profile", "smoke", "-q", "--set", "strategy.strength=0.5", "--data-root",
                              str(data_root), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert code == 0, out + err
    (result_file,) = (tmp_path / "run").glob("cells/*/result.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "ok" and result["strategy"] == "l2_anchor"
    assert result["config"]["strategy_args"] == {"strength": 0.5}


def test_entry_point_strategies_are_discovered(tmp_path):
    """An installed package exposing `clbench.strategies` shows up in `clbench list`."""
    package = tmp_path / "site"
    package.mkdir()
    (package / "my_l2.py").write_text(plugin_example(tmp_path).read_text())
    dist = package / "my_l2-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-l2\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[clbench.strategies]\nl2_anchor = my_l2\n")
    env = dict(os.environ, PYTHONPATH=str(package))
    proc = subprocess.run([sys.executable, "-m", "clbench.cli", "list", "strategies"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+l2_anchor\s+\[class_il, task_il, domain_il\] Naive plus an L2 pull", proc.stdout, re.M)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--scenario", "pmnist", "--strategy", "ewcc"], "unknown strategy 'ewcc'; valid strategys: agem"),
        (["run", "--scenario", "mnist", "--strategy", "ewc"], "unknown scenario 'mnist'; valid scenarios: 20news, banking77, brown_lm, clinc150, pmnist"),
        (["run", "--scenario", "pmnist", "--strategy", "ewc", "--set", "lr=abc"], "lr: 'abc' is not a number"),
        (["run", "--scenario", "pmnist", "--strategy", "ewc", "--set", "bogus=1"], "unknown config key 'bogus'"),
        (["run", "--scenario", "pmnist", "--strategy", "icarl"], "does not support domain_il"),
        (["run", "--scenario", "pmnist", "--strategy", "ewc", "--plugin", "/nope.py"], "plugin file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, capsys):
    code, out, err = run_cli([*args, "--out", str(tmp_path)], capsys)
    assert code == 2
    assert err.startswith("clbench: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "cells").exists()


def test_bad_suite_file_names_the_line(tmp_path, capsys):
    suite = tmp_path / "broken.toml"
    suite.write_text('scenarios = ["pmnist"]\nstrategies = ["naive",\n')
    code, _, err = run_cli(["bench", str(suite), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "broken.toml" in err and "line" in err


def test_missing_data_names_the_expected_file(tmp_path, capsys):
    code, out, _ = run_cli(["run", "--scenario", "pmnist", "--strategy", "naive", "--profile", "smoke", "-q",
                            "--no-download", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "run")],
                           capsys)
    # Missing data is a failed cell (the suite goes on) whose error names the file to provide.
    assert code == 1
    (result_file,) = (tmp_path / "run").glob("cells/*/result.json")
    error = json.loads(result_file.read_text())["error"]
    assert "DataNotFoundError" in error and "train-images-idx3-ubyte" in error


def test_conflicting_run_dir_is_refused_without_touching_results(tmp_path, data_root, capsys):
    base = ["run", "--scenario", "pmnist", "--strategy", "naive", "--profile", "smoke", "-q",
            "--data-root", str(data_root), "--out", str(tmp_path), *TINY]
    assert run_cli(base, capsys)[0] == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.json")}
    code, _, err = run_cli([*base, "--set", "lr=0.2"], capsys)
    assert code == 2 and "config changed" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.json")} == before
