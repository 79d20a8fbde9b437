"""`clbench tune` end to end on tiny cells: protocols, pruning, failed trials, kill and resume,
`bench --tuned`, and every bad input (one line, exit 2, nothing written). Cells come from
tests/plugins/tiny_val.py (blobs with a validation split), a fraction of a second each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import tomllib
import torch
from optuna.trial import TrialState

from clbench.cli import main
from clbench.tune.tuned_file import dumps

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = [str(ROOT / "tests" / "plugins" / name) for name in ("tiny_cells.py", "tiny_val.py")]


def write_suite(path: Path, tune: str, *, strategies=("naive",), variants: str = "", seeds=(0,), n_exp=3) -> Path:
    path.write_text("\n".join([
        'name = "tunetest"', 'profile = "smoke"', f"seeds = {list(seeds)}", 'scenarios = ["tiny_blobs_val"]',
        f"strategies = {json.dumps(list(strategies))}", f"plugin_files = {json.dumps(PLUGINS)}",
        "[scenario_args.tiny_blobs_val]", f"n_experiences = {n_exp}", "train_per_exp = 80", variants, tune,
    ]) + "\n")
    return path


def tune(suite: Path, out: Path, *extra: str) -> int:
    return main(["tune", str(suite), "--out", str(out), "-q", *extra])


def cells(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("**/cells/*/result.json"))]


def study(run_dir: Path, name: str = "tiny_blobs_val/naive"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}")


LR_GRID = '[tune.naive]\nlr = {grid = [0.05, 0.2]}'


def test_first_k_end_to_end_then_bench_tuned(tmp_path):
    suite = write_suite(tmp_path / "s.toml", LR_GRID)
    run, plots = tmp_path / "tune", tmp_path / "plots"
    rc = tune(suite, run, "--protocol", "first_k", "--k", "2", "--seeds", "100,101", "--trials", "2",
              "--sampler", "grid", "--pruner", "none", "--report", str(plots))
    assert rc == 0
    record = tomllib.loads((run / "tuned.toml").read_text())["tiny_blobs_val"]["naive"]
    assert record["protocol"] == "first_k" and record["k"] == 2 and record["trials"] == 2
    assert record["seeds"] == [100, 101] and record["values"]["lr"] in (0.05, 0.2)
    trial_cells = cells(run / "trials")
    assert len(trial_cells) == 4 and all(c["status"] == "ok" for c in trial_cells)
    # Every trial cell: a tuning seed, the first 2 of 3 experiences, measured on the val split.
    for c in trial_cells:
        assert c["seed"] in (100, 101) and len(c["matrix"]) == 2 and c["n_experiences"] == 2
        assert c["config"]["tuning"] == {"role": "trial", "protocol": "first_k", "first_k": 2}
        assert c["config"]["scenario_args"]["eval_split"] == "val"
    assert record["cpu_seconds"] == pytest.approx(round(sum(c["cpu_seconds"] for c in trial_cells), 2))
    best = max(study(run).get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    assert record["values"] == best.params
    assert sorted(p.name for p in plots.iterdir()) == ["tiny_blobs_val__naive__history.png",
                                                     "tiny_blobs_val__naive__importances.png"]

    bench = tmp_path / "bench"
    assert main(["bench", str(suite), "--out", str(bench), "-q", "--tuned", str(run / "tuned.toml"),
                 "--report", str(tmp_path / "report")]) == 0
    (evaluated,) = cells(bench)
    assert evaluated["config"]["train"]["lr"] == record["values"]["lr"] and len(evaluated["matrix"]) == 3
    assert evaluated["config"]["tuning"]["role"] == "tuned" and evaluated["config"]["tuning"]["k"] == 2
    assert "scenario.eval_split" not in json.dumps(evaluated["config"]["scenario_args"])
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Tuning" in summary and f"lr={record['values']['lr']}" in summary and "first_k (k=2)" in summary
    import csv

    with open(tmp_path / "report" / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert json.loads(row["tuned_values"]) == record["values"] and row["tuning_protocol"] == "first_k:k=2"
    assert int(row["tuning_trials"]) == 2 and float(row["tuning_cpu_seconds"]) == record["cpu_seconds"]


def test_validation_protocol_is_recorded(tmp_path):
    suite = write_suite(tmp_path / "s.toml", "[tune.naive]\nlr = {log = [0.01, 0.3]}")
    assert tune(suite, tmp_path / "t", "--protocol", "validation", "--seeds", "7", "--trials", "1") == 0
    (c,) = cells(tmp_path / "t" / "trials")
    assert c["config"]["tuning"] == {"role": "trial", "protocol": "validation"} and len(c["matrix"]) == 3
    assert c["config"]["scenario_args"]["val_fraction"] == 0.1 and c["config"]["scenario_args"]["eval_split"] == "val"
    record = tomllib.loads((tmp_path / "t" / "tuned.toml").read_text())["tiny_blobs_val"]["naive"]
    assert record["protocol"] == "validation" and "k" not in record and 0.01 <= record["values"]["lr"] <= 0.3


def test_first_experiences_truncates_the_built_stream():
    from clbench.registry import SCENARIOS, load_plugin_file
    from clbench.runner import first_experiences

    load_plugin_file(PLUGINS[0])
    spec = SCENARIOS.get("tiny_blobs")
    full = spec.builder(spec.options(n_experiences=3), "smoke", 5, None, False)
    part = first_experiences(full, 2)
    assert part.info.n_experiences == 2 and part.info.n_classes == full.info.n_classes
    for a, b in zip(part.train + part.test, full.train[:2] + full.test[:2], strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_pruner_stops_cells_while_they_run(tmp_path, jobs, capsys):
    """A threshold above any accuracy prunes every trial at its first reported experience."""
    suite = write_suite(tmp_path / "s.toml", LR_GRID)
    rc = tune(suite, tmp_path / "t", "--protocol", "validation", "--seeds", "100", "--trials", "2",
              "--sampler", "grid", "--pruner", "threshold", "--prune-below", "1.01", "--jobs", jobs)
    assert rc == 1 and "no trial completed" in capsys.readouterr().err
    trials = study(tmp_path / "t").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)
    for c in cells(tmp_path / "t" / "trials"):  # stopped after experience 0 of 3
        assert c["status"] == "failed" and c["error"].startswith("CellStopped") and len(c["matrix"]) == 1


def test_failed_trial_is_recorded_and_the_search_goes_on(tmp_path):
    suite = write_suite(tmp_path / "s.toml", '[tune.fragile]\n"strategy.fail" = {grid = [true, false]}',
                        strategies=("fragile",))
    assert tune(suite, tmp_path / "t", "--protocol", "validation", "--seeds", "100", "--trials", "2",
                "--sampler", "grid", "--pruner", "none") == 0
    trials = study(tmp_path / "t", "tiny_blobs_val/fragile").get_trials()
    by_value = {t.params["strategy.fail"]: t for t in trials}
    assert by_value[True].state == TrialState.FAIL and "deliberate failure" in by_value[True].user_attrs["error"]
    assert by_value[False].state == TrialState.COMPLETE
    record = tomllib.loads((tmp_path / "t" / "tuned.toml").read_text())["tiny_blobs_val"]["fragile"]
    assert record["values"] == {"strategy.fail": False} and record["failed"] == 1 and record["trials"] == 2


def test_sigkill_then_resume_keeps_finished_trials(tmp_path):
    marker = tmp_path / "marker"
    marker.mkdir()
    variants = ('[[variants]]\nlabel = "slow"\nstrategy = "probe"\n'
                f'set = {{ "strategy.marker_dir" = "{marker}", "strategy.pause" = 2.0 }}')
    suite = write_suite(tmp_path / "s.toml", "[tune.slow]\nlr = {range = [0.01, 0.3]}", strategies=(),
                        variants=variants)
    args = ["tune", str(suite), "--out", str(tmp_path / "t"), "-q", "--protocol", "validation", "--seeds", "100",
            "--trials", "3", "--sampler", "random", "--pruner", "none"]
    proc = subprocess.Popen([sys.executable, "-m", "clbench.cli", *args], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = marker / "starts.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # trial 0 is done, trial 1 is pausing inside its cell
    proc.wait()
    first = log.read_text().splitlines()
    assert len(first) == 2
    s = study(tmp_path / "t", "tiny_blobs_val/slow")
    assert [t.state for t in s.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]

    assert main(args) == 0
    started = [line.split()[0] for line in log.read_text().splitlines()]
    assert started.count(first[0].split()[0]) == 1  # the finished trial's cell never ran again
    trials = study(tmp_path / "t", "tiny_blobs_val/slow").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[2].params == trials[1].params  # the interrupted trial's values were run again
    record = tomllib.loads((tmp_path / "t" / "tuned.toml").read_text())["tiny_blobs_val"]["slow"]
    assert record["trials"] == 3 and record["interrupted"] == 1 and record["completed"] == 3


BAD = {
    "empty search space": ("", [], "empty search space"),
    "empty table": ("[tune.naive]", [], "[tune.naive] is an empty search space"),
    "unknown row": ("[tune.ewc]\nlr = {grid = [0.1]}", [], "row 'ewc'"),
    "untunable key": ("[tune.naive]\nbogus = {grid = [1]}", [], "'bogus' cannot be tuned"),
    "unknown strategy key": ('[tune.naive]\n"strategy.nope" = {grid = [1]}', [], "nope"),
    "low > high": ("[tune.naive]\nlr = {range = [0.5, 0.1]}", [], "[0.5, 0.1] has low > high"),
    "log with 0": ("[tune.naive]\nlr = {log = [0, 1]}", [], "log = [0, 1] contains 0"),
    "val_fraction": (LR_GRID, ["--val-fraction", "0.7"], "--val-fraction 0.7"),
    "first_k >= T": (LR_GRID, ["--protocol", "first_k", "--k", "3"], "--k 3"),
    "seeds overlap": (LR_GRID, ["--seeds", "0,100"], "tuning seed(s) [0]"),
    "grid over a range": ("[tune.naive]\nlr = {range = [0.1, 0.5]}", ["--sampler", "grid"], "lr"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    table, extra, expected = BAD[case]
    suite = write_suite(tmp_path / "s.toml", table)
    args = {"--protocol": "validation", "--seeds": "100", "--trials": "2"}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value
    out = tmp_path / "t"
    assert tune(suite, out, *[x for kv in args.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clbench: error:") and expected in err[0], err
    assert not out.exists()


def test_bench_refuses_a_tuned_file_that_does_not_match_the_suite(tmp_path, capsys):
    suite = write_suite(tmp_path / "s.toml", LR_GRID)
    record = {"values": {"lr": 0.1}, "protocol": "validation", "trials": 2, "seeds": [100], "cpu_seconds": 1.0}
    cases = {
        "stray": ({("tiny_blobs_val", "naive"): record, ("tiny_blobs_val", "ewc"): record}, "tiny_blobs_val/ewc"),
        "missing": ({}, "no tuned values for row(s) with a search space: tiny_blobs_val/naive"),
        "seeds": ({("tiny_blobs_val", "naive"): record | {"seeds": [0]}}, "tuned on seed(s) [0]"),
    }
    for name, (records, expected) in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(dumps(records))
        assert main(["bench", str(suite), "--out", str(tmp_path / name), "-q", "--tuned", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not (tmp_path / name).exists()


def test_on_ray_trials_run_to_completion_without_pruning(tmp_path):
    """Ray cells report no intermediate values: even a pruner that prunes everything prunes nothing."""
    from clbench.engines.ray_engine import import_ray

    ray = import_ray(local=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        suite = write_suite(tmp_path / "s.toml", LR_GRID)
        assert tune(suite, tmp_path / "t", "--protocol", "validation", "--seeds", "100", "--trials", "1",
                    "--sampler", "grid", "--pruner", "threshold", "--prune-below", "1.01", "--engine", "ray") == 0
    finally:
        ray.shutdown()
    (trial,) = study(tmp_path / "t").get_trials()
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values == {}
    (c,) = cells(tmp_path / "t" / "trials")
    assert c["status"] == "ok" and len(c["matrix"]) == 3


def test_a_scenario_sub_table_changes_that_scenarios_study_only():
    from clbench.errors import ConfigError
    from clbench.tune.space import parse_space

    table = {"lr": {"log": [0.003, 0.3]}, "strategy.ewc_lambda": {"grid": [1, 10]},
             "split_mnist": {"lr": {"log": [0.0001, 0.01]}}}
    scenarios = ["pmnist", "split_mnist"]
    pm = {p.key: p.values for p in parse_space("ewc", table, ["ewc"], "pmnist", scenarios)}
    sm = {p.key: p.values for p in parse_space("ewc", table, ["ewc"], "split_mnist", scenarios)}
    assert pm == {"lr": (0.003, 0.3), "strategy.ewc_lambda": (1, 10)}
    assert sm == {"lr": (0.0001, 0.01), "strategy.ewc_lambda": (1, 10)}
    # A sub-table is checked like the rest, naming its scenario.
    bad = {"lr": {"log": [0.003, 0.3]}, "split_mnist": {"lr": {"log": [0, 0.01]}}}
    with pytest.raises(ConfigError, match=r"\[tune.ewc\] \(split_mnist\): lr log = \[0, 0.01\] contains 0"):
        parse_space("ewc", bad, ["ewc"], "split_mnist", scenarios)
