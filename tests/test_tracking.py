"""`--log`: each tracker's files, read back with the tracker's own reader, hold the numbers the
cell stored in its result.json (docs/tracking.md)."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from clbench.cli import main
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.suite import run_suite

from .test_reliability import results, write_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 3 experiences x 2 epochs x 4 minibatches of 32: 24 training iterations.
TINY = {"scenario.n_experiences": 3, "scenario.train_per_exp": 128, "scenario.test_per_exp": 100,
        "train_mb_size": 32, "epochs": 2, "lr": 0.05}
ITERATIONS = 24
EXPS = ["eval/accuracy/exp00", "eval/accuracy/exp01", "eval/accuracy/exp02"]


def cell(tmp_path, data_root, tracking, strategy="naive", **overrides):
    cfg = resolve_config("pmnist", strategy, seed=0, profile="smoke", overrides={**TINY, **overrides})
    result = run_cell(cfg, tmp_path, data_root=data_root, progress=False, tracking=tracking)
    assert result["status"] == "ok", result["traceback"]
    stored = json.loads((tmp_path / "cells" / result["cell_id"] / "result.json").read_text())
    return stored, tmp_path / "tracking"


def check_series(series: dict[str, list[tuple[int, float]]], stored: dict, exact=True) -> None:
    """series: name -> [(step, value)] as a tracker gives it back."""
    same = (lambda a, b: a == b) if exact else (lambda a, b: np.float32(a) == np.float32(b))
    final = [series[name][-1] for name in EXPS]
    assert all(step == ITERATIONS for step, _ in final)
    assert all(same(v, want) for (_, v), want in zip(final, stored["matrix"][-1], strict=True)), final
    # One point per evaluation: the untrained model at step 0, then one per experience.
    assert [s for s, _ in series[EXPS[0]]] == [0, 8, 16, 24]
    assert all(same(v, want) for (_, v), want in zip(
        [series[name][0] for name in EXPS], stored["initial"], strict=True))
    assert all(same(series[EXPS[1]][i + 1][1], row[1]) for i, row in enumerate(stored["matrix"]))
    assert same(series["eval/accuracy/avg_seen"][-1][1], sum(stored["matrix"][-1]) / 3)
    assert [s for s, _ in series["train/loss"]] == list(range(ITERATIONS))
    assert all(np.isfinite(v) and v > 0 for _, v in series["train/loss"])
    assert [(s, v) for s, v in series["train/lr"]] == [(s, 0.05) if exact else (s, np.float32(0.05))
                                                       for s in range(ITERATIONS)]


def test_tensorboard_event_files_hold_the_stored_matrix(tmp_path, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stored, tracking = cell(tmp_path, data_root, ("tensorboard",))
    events = EventAccumulator(str(tracking / "tensorboard" / "pmnist" / "naive" / "seed0"))
    events.Reload()
    series = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    check_series(series, stored, exact=False)  # TensorBoard stores float32


def test_mlflow_file_store_holds_the_stored_matrix(tmp_path, data_root, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stored, tracking = cell(tmp_path, data_root, ("mlflow",))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading a file store, as `mlflow ui` would
    client = MlflowClient(tracking_uri=(tracking / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("clbench/pmnist")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "naive/seed0" and run.info.status == "FINISHED"
    assert run.data.tags["clbench.cell_id"] == stored["cell_id"]
    assert (run.data.tags["clbench.label"], run.data.tags["clbench.seed"]) == ("naive", "0")
    series = {name: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, name),
                                                      key=lambda m: m.step)]
              for name in run.data.metrics}
    check_series(series, stored)


def wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte header, then 32 KiB
    blocks of records, each with a 7-byte header: CRC, length, type full/first/middle/last)."""
    raw, records, part = path.read_bytes(), [], b""
    assert raw[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        payload, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            part = payload
        elif kind == 3:
            part += payload
        elif kind == 4:
            records.append(part + payload)
    return records


def test_wandb_offline_run_holds_the_stored_matrix(tmp_path, data_root, monkeypatch):
    from wandb.proto import wandb_internal_pb2

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    stored, tracking = cell(tmp_path, data_root, ("wandb",))
    (run_dir,) = (tracking / "wandb").glob("offline-run-*")
    series: dict[str, list] = {}
    meta = None
    for data in wandb_records(next(run_dir.glob("run-*.wandb"))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            meta = record.run
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for name, value in row.items():
                if not name.startswith("_"):
                    series.setdefault(name, []).append((row["_step"], value))
    assert (meta.display_name, meta.run_group, meta.project) == ("pmnist/naive/seed0", "pmnist/naive", "clbench")
    check_series(series, stored)


def read_csv(tracking: Path, label="naive") -> dict[str, list]:
    series: dict[str, list] = {}
    with open(tracking / "csv" / "pmnist" / label / "seed0" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            series.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return series


def test_csv_file_holds_the_stored_matrix(tmp_path, data_root):
    stored, tracking = cell(tmp_path, data_root, ("csv",))
    check_series(read_csv(tracking), stored)


def test_cms_logs_one_learning_rate_per_level(tmp_path, data_root):
    stored, tracking = cell(tmp_path, data_root, ("csv",), strategy="cms", model="cms_mlp",
                            **{"strategy.lr_mults": [1.0, 0.5, 0.0]})
    series = read_csv(tracking, "cms")
    levels = {name: values for name, values in series.items() if name.startswith("train/lr/")}
    # The three CMS levels, and the every-iteration group of the other parameters (stem, head).
    assert sorted(levels) == ["train/lr/level0", "train/lr/level1", "train/lr/level2", "train/lr/outer"]
    for name, want in zip(sorted(levels), [0.05, 0.025, 0.0, 0.05], strict=True):  # lr x multiplier; 0 frozen
        assert levels[name] == [(s, want) for s in range(ITERATIONS)], name
    assert "train/lr" not in series and len(series["train/loss"]) == ITERATIONS
    assert [v for _, v in series["eval/accuracy/exp02"]][-1] == stored["matrix"][-1][2]


def test_worker_processes_log_and_log_leaves_the_config_hash_alone(tmp_path):
    suite = write_suite(tmp_path / "s.toml", "track", [{"label": "naive", "strategy": "naive"}], seeds=[0, 1])
    suite.write_text(suite.read_text().replace('profile = "smoke"', 'profile = "smoke"\nlog = ["csv"]'))
    assert main(["bench", str(suite), "--out", str(tmp_path / "logged"), "-q", "--jobs", "2"]) == 0
    assert main(["bench", str(suite), "--out", str(tmp_path / "plain"), "-q", "--log", "none"]) == 0
    logged, plain = results(tmp_path / "logged"), results(tmp_path / "plain")
    assert sorted(logged) == sorted(plain) and len(logged) == 2  # same cell ids: same config hashes
    assert not (tmp_path / "plain" / "tracking").exists()
    for result in logged.values():
        path = tmp_path / "logged" / "tracking" / "csv" / "tiny_blobs" / "naive" / f"seed{result['seed']}" / "metrics.csv"
        with open(path) as f:
            last = {row["name"]: float(row["value"]) for row in csv.DictReader(f)}
        n = len(result["matrix"])
        assert [last[f"eval/accuracy/exp{j:02d}"] for j in range(n)] == result["matrix"][-1]


def bench_error(tmp_path, capsys, *args, suite_extra="") -> str:
    suite = write_suite(tmp_path / "s.toml", "track", [{"label": "naive", "strategy": "naive"}], seeds=[0])
    suite.write_text(suite_extra + suite.read_text())  # top-level keys before the [[variants]] tables
    assert main(["bench", str(suite), "--out", str(tmp_path / "out"), "-q", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clbench: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    return err


def test_an_unknown_tracker_is_one_line_naming_it_and_the_accepted_ones(tmp_path, capsys):
    err = bench_error(tmp_path, capsys, "--log", "tensorboard,foo")
    assert "'foo'" in err and "tensorboard, wandb, mlflow, csv" in err
    err = bench_error(tmp_path, capsys, suite_extra='log = ["tb"]\n')
    assert "'tb'" in err and "s.toml: log" in err


def test_a_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch, data_root):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails as if not installed
    err = bench_error(tmp_path, capsys, "--log", "mlflow")
    assert "pip install 'clbench[track]'" in err and "mlflow" in err
    # A cell started without the driver's check (the Python API) fails with the same line.
    cfg = resolve_config("pmnist", "naive", seed=0, profile="smoke", overrides=TINY)
    result = run_cell(cfg, tmp_path / "cell", data_root=data_root, progress=False, tracking=("mlflow",))
    assert result["status"] == "failed" and "pip install 'clbench[track]'" in result["error"]


def test_run_suite_takes_the_trackers_from_the_engine_options(tmp_path, data_root):
    from clbench.engines import EngineOptions

    cfg = resolve_config("pmnist", "naive", seed=0, profile="smoke", overrides=TINY)
    outcome = run_suite([cfg], tmp_path, data_root=data_root, progress=False,
                        options=EngineOptions(log=("csv", "csv")))
    assert outcome.ok and (tmp_path / "tracking" / "csv" / "pmnist" / "naive" / "seed0" / "metrics.csv").is_file()


def test_a_window_sends_means_of_the_training_series(tmp_path, data_root):
    """`csv:5` gets the mean of every 5 iterations' loss (steps 4, 9, ...), the window an
    accuracy row cuts short (before the row), and every accuracy row as is; the every-iteration
    TensorBoard log of the same cell is the reference."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stored, tracking = cell(tmp_path, data_root, ("tensorboard", "csv:5"))
    (events,) = (tracking / "tensorboard").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(loss) == list(range(ITERATIONS))
    series = read_csv(tracking)
    # windows restart after each row (at 8 and 16 iterations): [0-4], [5-7] cut by the row, [8-12], ...
    windows = [(0, 4), (5, 7), (8, 12), (13, 15), (16, 20), (21, 23)]
    assert [s for s, _ in series["train/loss"]] == [end for _, end in windows]
    for (start, end), (_, value) in zip(windows, series["train/loss"], strict=True):
        assert value == pytest.approx(np.mean([loss[k] for k in range(start, end + 1)]), rel=1e-6)
    assert [v for _, v in series["eval/accuracy/exp02"]] == [stored["initial"][2]] + [r[2] for r in stored["matrix"]]


def test_window_syntax_is_checked():
    from clbench.errors import ConfigError
    from clbench.tracking import parse_log

    assert parse_log(["wandb:10", "csv", "mlflow:1"]) == ("wandb:10", "csv", "mlflow")
    assert parse_log(["csv:3,csv:4"]) == ("csv:4",)  # the last one wins
    for bad in ("wandb:0", "wandb:x", "wandb:"):
        with pytest.raises(ConfigError, match="whole number of iterations >= 1"):
            parse_log([bad])
    with pytest.raises(ConfigError, match="unknown tracker 'foo:3'|unknown tracker 'foo'"):
        parse_log(["foo:3"])
