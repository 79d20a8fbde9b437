"""`clbench reproduce`: anchor files, validation, PASS/FAIL logic and the report.

Everything here runs on synthetic results or smoke-sized streams; the real
anchors' short versions are in test_anchor_regression.py.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import pytest

from clbench.errors import ConfigError, RunDirConflictError
from clbench.reproduce import (
    AnchorConfig,
    add_reproduce_parser,
    anchor_cells,
    cmd_reproduce,
    evaluate,
    load_anchor,
    load_anchors,
    select,
    stream_accuracy,
    write_report,
)

ANCHOR_DIR = Path(__file__).resolve().parents[1] / "suites" / "anchors"
# The anchors issue 4 asks for, with their published targets.
REQUIRED = {
    "pmnist_ewc": 0.83, "pmnist_si": 0.83, "pmnist_agem": 0.81, "pmnist_gem": 0.93,
    "smnist_lwf": 0.23, "smnist_gdumb": 0.97, "smnist_til_si": 0.97, "scifar100_replay": 0.32,
    "scifar100_er_ace": 0.24, "scifar100_til_gem": 0.63, "scifar100_icarl": 0.48,
}  # fmt: skip

MINIMAL = """
target = 0.5
source = "test"
scenario = "pmnist"
strategy = "naive"
[set]
model = "mlp"
optimizer = "sgd"
lr = 0.1
epochs = 1
train_mb_size = 32
"""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clbench")
    add_reproduce_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["reproduce", *argv])


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the shipped anchors
def test_shipped_anchors_load_and_resolve():
    anchors = {a.name: a for a in load_anchors(ANCHOR_DIR)}
    assert set(REQUIRED) <= set(anchors)
    for name, target in REQUIRED.items():
        a = anchors[name]
        assert a.target == target, name
        assert "continual-learning-baselines@4900462" in a.source, name
        cells = anchor_cells(a)  # raises on any bad key or value
        assert [c.seed for c in cells] == a.seeds
        assert all(c.label == name for c in cells)
    # Multi-epoch CIFAR protocols are GPU anchors; all MNIST ones run on CPU.
    assert {n for n, a in anchors.items() if a.gpu} >= {"scifar100_replay", "scifar100_icarl"}
    assert not any(a.gpu for n, a in anchors.items() if "mnist" in n)


def test_shipped_anchor_settings_are_the_published_ones():
    anchors = {a.name: a for a in load_anchors(ANCHOR_DIR)}
    ewc = anchor_cells(anchors["pmnist_ewc"])[0]
    assert (ewc.model, ewc.model_args) == ("mlp", {"hidden": 512, "layers": 1})
    assert (ewc.train.optimizer, ewc.train.lr, ewc.train.epochs, ewc.train.train_mb_size) == (
        "sgd",
        0.001,
        10,
        256,
    )
    assert ewc.strategy_args == {"ewc_lambda": 1.0}
    assert ewc.scenario_args["n_experiences"] == 10
    gem = anchor_cells(anchors["pmnist_gem"])[0]
    assert gem.scenario_args["n_experiences"] == 5 and "REDUCED" in anchors["pmnist_gem"].notes
    lwf = anchor_cells(anchors["smnist_lwf"])[0]
    assert lwf.plugins == ["ce_decay"] and lwf.model == "mlp_tanh" and lwf.train.epochs == 21
    assert anchor_cells(anchors["smnist_til_si"])[0].scenario == "split_mnist_til"


def test_seeds_override():
    a = load_anchor(ANCHOR_DIR / "pmnist_ewc.toml")
    assert [c.seed for c in anchor_cells(a, [0, 1, 2])] == [0, 1, 2]
    assert len({c.config_hash() for c in anchor_cells(a, [0, 1, 2])}) == 1


# --------------------------------------------------------------------------- bad anchor files
@pytest.mark.parametrize(
    "text, message",
    [
        ("target = [", "TOML error"),
        (MINIMAL + "\n", None),
        (MINIMAL.replace("target = 0.5", "target = 0.5\ncolour = 1"), "unknown key(s) colour"),
        (MINIMAL.replace("target = 0.5\n", ""), "lacks target"),
        (MINIMAL.replace("target = 0.5", 'target = "high"'), "is not a number"),
        (MINIMAL.replace("target = 0.5", "target = 1.5"), "target must be in (0, 1]"),
        (MINIMAL.replace("target = 0.5", "target = 0.5\ndelta = -0.1"), "delta in [0, 1)"),
        (MINIMAL.replace("target = 0.5", "target = 0.5\ngpu = 1"), "is not a boolean"),
        (MINIMAL.replace("target = 0.5", "target = 0.5\nseeds = []"), "seeds must be"),
        (MINIMAL.replace("target = 0.5", "target = 0.5\nseeds = [1, 1]"), "seeds must be"),
        (MINIMAL.replace("target = 0.5", 'target = 0.5\nname = "a__b"'), "bad anchor name"),
        (MINIMAL.replace("lr = 0.1\n", ""), "must state the published lr"),
    ],
)
def test_bad_anchor_files_give_one_line_errors(tmp_path, text, message):
    path = write(tmp_path, "x", text)
    if message is None:
        assert load_anchor(path).name == "x"
        return
    with pytest.raises(ConfigError) as info:
        load_anchor(path)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "extra, message",
    [
        ('"strategy.ewc_lambda" = 1.0', "strategy 'naive' takes no parameters"),
        ('"scenario.n_experiences" = 0', "bad scenario 'pmnist' options"),
        ('"model.width" = 3', "unknown argument(s) width"),
        ("colour = 3", "unknown config key 'colour'"),
    ],
)
def test_bad_settings_are_caught_by_resolve_and_name_the_anchor(tmp_path, extra, message):
    anchor = load_anchor(write(tmp_path, "bad", MINIMAL + extra + "\n"))
    with pytest.raises(ConfigError) as info:
        anchor_cells(anchor)
    assert str(info.value).startswith("anchor bad:") and message in str(info.value)


def test_every_anchor_is_validated_before_any_runs(tmp_path):
    write(tmp_path, "good", MINIMAL)
    write(tmp_path, "broken", MINIMAL + '"strategy.nonsense" = 1\n')
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="anchor broken"):
        cmd_reproduce(parse(["--anchors", str(tmp_path), "--only", "good", "--out", str(runs)]))
    assert not runs.exists()


def test_duplicate_names_and_empty_directory(tmp_path):
    with pytest.raises(ConfigError, match="no anchor files"):
        load_anchors(tmp_path)
    write(tmp_path, "a", MINIMAL.replace("target = 0.5", 'target = 0.5\nname = "same"'))
    write(tmp_path, "b", MINIMAL.replace("target = 0.5", 'target = 0.5\nname = "same"'))
    with pytest.raises(ConfigError, match="used twice"):
        load_anchors(tmp_path)


# --------------------------------------------------------------------------- selection
def test_select():
    cpu = AnchorConfig("cpu", 0.5, "s", "pmnist", "naive")
    gpu = AnchorConfig("gpu", 0.5, "s", "split_cifar100", "naive", gpu=True)
    assert select([cpu, gpu], [], False) == [cpu]
    assert select([cpu, gpu], [], True) == [cpu, gpu]
    assert select([cpu, gpu], ["gpu"], True) == [gpu]
    with pytest.raises(ConfigError, match="--include-gpu"):
        select([cpu, gpu], ["gpu"], False)
    with pytest.raises(ConfigError, match="unknown anchor"):
        select([cpu, gpu], ["nope"], False)


# --------------------------------------------------------------------------- PASS / FAIL
def result(last_row, seed=0, n_test=None, status="ok", wall=10.0):
    T = len(last_row)
    matrix = [[0.0] * T for _ in range(T - 1)] + [list(last_row)]
    return {
        "seed": seed,
        "status": status,
        "matrix": matrix,
        "n_test": n_test or [100] * T,
        "wall_seconds": wall,
        "error": None if status == "ok" else "RuntimeError: boom",
    }


ANCHOR = AnchorConfig("a", target=0.80, source="s", scenario="pmnist", strategy="naive", delta=0.03)


def test_pass_is_one_sided_and_inclusive():
    assert evaluate(ANCHOR, [result([0.77, 0.77])]).status == "PASS"  # exactly target - delta
    assert evaluate(ANCHOR, [result([0.99, 0.99])]).status == "PASS"  # above target is fine
    assert evaluate(ANCHOR, [result([0.769, 0.769])]).status == "FAIL"


def test_judged_on_the_mean_over_seeds_with_ci():
    r = evaluate(
        ANCHOR, [result([0.80, 0.80], 0), result([0.70, 0.72], 1), result([0.76, 0.78], 2)]
    )
    assert r.accs == pytest.approx([0.80, 0.71, 0.77])
    assert r.mean == pytest.approx(0.76) and r.status == "FAIL"
    assert r.ci95 > 0 and math.isfinite(r.ci95)
    assert r.seconds == pytest.approx(30.0)
    single = evaluate(ANCHOR, [result([0.8, 0.8])])
    assert math.isnan(single.ci95)


def test_failed_or_missing_cell_is_an_error_not_a_pass():
    r = evaluate(ANCHOR, [result([0.9, 0.9], 0), result([0.0, 0.0], 1, status="failed")])
    assert r.status == "ERROR" and "seed 1: RuntimeError: boom" in r.errors
    assert evaluate(ANCHOR, [None]).status == "ERROR"


def test_stream_accuracy_weights_by_test_size():
    r = result([1.0, 0.5], n_test=[300, 100])
    assert stream_accuracy(r) == pytest.approx(0.875)
    assert evaluate(ANCHOR, [r]).mean == pytest.approx(0.75)  # ACC is the plain mean


def test_report_files(tmp_path):
    anchors = [ANCHOR, AnchorConfig("b", 0.5, "src-b", "pmnist", "naive", notes="diagnosis here")]
    results = [
        evaluate(anchors[0], [result([0.9, 0.9])]),
        evaluate(anchors[1], [result([0.1, 0.1])]),
    ]
    cells = {"a": [_cfg("a")], "b": [_cfg("b")]}
    readme = write_report(tmp_path, anchors, results, cells, "clbench reproduce")
    text = readme.read_text()
    assert "| a | 0.80 | 0.03 | 0.900 |" in text and "**PASS**" in text and "**FAIL**" in text
    assert "diagnosis here" in text and "## Settings used" in text
    rows = list(csv.DictReader((tmp_path / "reproduce.csv").open()))
    assert [r["result"] for r in rows] == ["PASS", "FAIL"]
    assert {"anchor", "target", "delta", "acc_mean", "acc_ci95", "seconds", "notes"} <= set(rows[0])
    assert (tmp_path / "settings.json").is_file()


def _cfg(label):
    from clbench.resolve import resolve_config

    return resolve_config("pmnist", "naive", profile="smoke", label=label)


# ------------------------------------------------------------------ end to end (smoke size)
SMOKE_ANCHOR = """
target = {target}
delta = {delta}
source = "test"
scenario = "pmnist"
strategy = "naive"
profile = "smoke"
notes = "smoke"
[set]
"scenario.n_experiences" = 2
"scenario.train_per_exp" = 128
"scenario.test_per_exp" = 128
model = "mlp"
"model.hidden" = 32
optimizer = "sgd"
lr = 0.1
epochs = 1
train_mb_size = 32
"""


def test_cmd_reproduce_end_to_end(tmp_path, data_root, capsys):
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    write(anchors, "easy", SMOKE_ANCHOR.format(target=0.05, delta=0.03))
    write(anchors, "impossible", SMOKE_ANCHOR.format(target=1.0, delta=0.0))
    common = [
        "--anchors",
        str(anchors),
        "--out",
        str(tmp_path / "runs"),
        "--report-dir",
        str(tmp_path / "report"),
        "--data-root",
        str(data_root),
        "--no-download",
        "-q",
    ]
    assert cmd_reproduce(parse(common + ["--only", "easy", "--seeds", "2"])) == 0
    assert len(list((tmp_path / "runs" / "easy" / "cells").iterdir())) == 2
    rows = list(csv.DictReader((tmp_path / "report" / "reproduce.csv").open()))
    assert [(r["anchor"], r["result"], r["n_seeds"]) for r in rows] == [("easy", "PASS", "2")]
    assert cmd_reproduce(parse(common)) == 1  # one anchor fails: exit code 1
    out = capsys.readouterr().out
    assert "FAIL impossible" in out and "PASS easy" in out
    # A changed anchor is refused before any anchor runs, not after the others.
    changed = SMOKE_ANCHOR.format(target=0.05, delta=0.03).replace("lr = 0.1", "lr = 0.05")
    write(anchors, "easy", changed)
    before = sorted((tmp_path / "runs").rglob("result.json"))
    with pytest.raises(RunDirConflictError, match="the config changed"):
        cmd_reproduce(parse(common + ["--no-resume"]))
    assert sorted((tmp_path / "runs").rglob("result.json")) == before


def test_jobs_run_anchors_side_by_side_and_report_in_anchor_order(tmp_path, data_root, capsys):
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    write(anchors, "easy", SMOKE_ANCHOR.format(target=0.05, delta=0.03))
    write(anchors, "impossible", SMOKE_ANCHOR.format(target=1.0, delta=0.0))
    args = ["--anchors", str(anchors), "--out", str(tmp_path / "runs"), "--report-dir", str(tmp_path / "report"),
            "--data-root", str(data_root), "--no-download", "-q", "--jobs", "2"]
    assert cmd_reproduce(parse(args)) == 1
    rows = list(csv.DictReader((tmp_path / "report" / "reproduce.csv").open()))
    assert [(r["anchor"], r["result"]) for r in rows] == [("easy", "PASS"), ("impossible", "FAIL")]
    with pytest.raises(ConfigError, match="bad --jobs 0"):
        cmd_reproduce(parse(args[:-1] + ["0"]))


def test_dry_run_runs_nothing(tmp_path, capsys):
    write(tmp_path, "x", MINIMAL)
    runs = tmp_path / "runs"
    assert cmd_reproduce(parse(["--anchors", str(tmp_path), "--out", str(runs), "--dry-run"])) == 0
    assert "x: 1 cell(s), target 0.50" in capsys.readouterr().out
    assert not runs.exists()


def test_gpu_anchor_without_cuda_is_refused_before_running(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    write(tmp_path, "g", MINIMAL.replace("target = 0.5", "target = 0.5\ngpu = true"))
    with pytest.raises(ConfigError, match="need a GPU"):
        cmd_reproduce(
            parse(["--anchors", str(tmp_path), "--out", str(tmp_path / "r"), "--include-gpu"])
        )


def test_bad_seeds_count(tmp_path):
    write(tmp_path, "x", MINIMAL)
    with pytest.raises(ConfigError, match="--seeds"):
        cmd_reproduce(parse(["--anchors", str(tmp_path), "--seeds", "0"]))


# ------------------------------------------------------------------ anchor models and plugin
def test_anchor_models_build_and_run():
    import torch

    import clbench.anchor_models  # noqa: F401  (registers them until the registry imports it)
    from clbench.registry import MODELS
    from clbench.scenarios.stream import ScenarioInfo

    mnist = ScenarioInfo("m", "class_il", 5, 10, (1, 28, 28), [[0, 1]] * 5)
    mlp = MODELS.get("mlp_tanh").factory(mnist, "full", hidden=200, layers=1)
    assert isinstance(mlp.features[2], torch.nn.Tanh)
    assert mlp(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    cifar = ScenarioInfo("c", "class_il", 10, 100, (3, 32, 32), [list(range(10))] * 10)
    for name in ("resnet32", "icarl_resnet32"):
        net = MODELS.get(name).factory(cifar, "full")
        x = torch.randn(2, 3, 32, 32)
        assert net(x).shape == (2, 100) and net.features(x).shape == (2, 64), name


def test_ce_decay_scales_only_the_cross_entropy_before_lwf_adds_its_term():
    from types import SimpleNamespace

    import torch
    from avalanche.training.plugins import LwFPlugin

    from clbench.anchor_models import CEDecayPlugin
    from clbench.runner import build_strategy
    from clbench.scenarios.stream import ScenarioInfo

    loss = SimpleNamespace(loss=torch.tensor(6.0), clock=SimpleNamespace(train_exp_counter=2))
    CEDecayPlugin().before_backward(loss)
    assert loss.loss.item() == pytest.approx(2.0)  # third experience: CE / 3
    (cfg,) = anchor_cells(load_anchor(ANCHOR_DIR / "smnist_lwf.toml"))
    info = ScenarioInfo("split_mnist", "class_il", 5, 10, (1, 28, 28), [[0, 1]] * 5)
    _, strategy = build_strategy(cfg, SimpleNamespace(info=info), torch.device("cpu"))
    kinds = [type(p) for p in strategy.plugins]
    # Plugins run in list order: CE is scaled before LwF adds its distillation term.
    assert kinds.index(CEDecayPlugin) < kinds.index(LwFPlugin)
