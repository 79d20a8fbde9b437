"""Validation streams and the stream seed (scenarios/validation.py, clbench/stream_protocol.py)."""

from __future__ import annotations

import pytest
import torch

from clbench.errors import ConfigError
from clbench.registry import SCENARIOS
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.scenarios.stream import ExperienceTensors, ScenarioInfo, TensorStream
from clbench.scenarios.validation import build_stream, with_validation

from .test_text_data import write_banking

SMOKE = {"pmnist": {"train_per_exp": 300}, "split_mnist": {"train_per_exp": 300}}


def config(scenario="pmnist", seed=0, strategy="naive", **protocol):
    overrides = {f"scenario.{k}": v for k, v in (SMOKE.get(scenario, {}) | protocol).items()}
    return resolve_config(scenario, strategy, seed=seed, profile="smoke", overrides=overrides)


def build(cfg, data_root):
    return build_stream(SCENARIOS.get(cfg.scenario), cfg.scenario_args, cfg.profile, cfg.seed, data_root, False)


def base_rows(exp):
    return set(exp.x.index.tolist())


@pytest.mark.parametrize("scenario", ["pmnist", "split_mnist"])
def test_heldout_rows_are_disjoint_from_train_and_cover_it(scenario, data_root):
    full = build(config(scenario), data_root)
    split = build(config(scenario, val_fraction=0.25, eval_split="val"), data_root)
    for e, exp in enumerate(full.train):
        train, val = base_rows(split.train[e]), base_rows(split.test[e])
        assert not train & val and train | val == base_rows(exp)
        assert len(val) == split.info.extra["validation"]["val_sizes"][e] > 0


def test_heldout_rows_are_stratified_by_class(data_root):
    full = build(config("split_mnist"), data_root)
    split = build(config("split_mnist", val_fraction=0.2, eval_split="val"), data_root)
    for e, exp in enumerate(full.train):
        for c in torch.unique(exp.y).tolist():
            n_c = int((exp.y == c).sum())
            assert int((split.test[e].y == c).sum()) == round(0.2 * n_c)


def test_split_follows_the_stream_seed_not_the_training_seed(data_root):
    a = build(config(seed=1, stream_seed=7, val_fraction=0.2), data_root)
    b = build(config(seed=2, stream_seed=7, val_fraction=0.2), data_root)
    c = build(config(seed=1, stream_seed=8, val_fraction=0.2), data_root)
    va, vb, vc = (s.info.extra["validation"]["heldout_sha256"] for s in (a, b, c))
    assert va == vb != vc
    assert a.info.extra["domain"] == b.info.extra["domain"] != c.info.extra["domain"]  # permutations too
    assert all(torch.equal(x.x.index, y.x.index) for x, y in zip(a.train, b.train, strict=True))
    # Without stream_seed the cell seed draws the stream, as before.
    assert build(config(seed=7), data_root).info.extra["domain"] == a.info.extra["domain"]


def test_val_fraction_zero_leaves_the_config_and_stream_untouched(data_root):
    assert config(val_fraction=0).config_hash() == config().config_hash()
    assert config(eval_split="test").scenario_args == config().scenario_args
    stream = build(config(val_fraction=0.0), data_root)
    assert "validation" not in stream.info.extra and all(len(e) == 300 for e in stream.train)


def test_eval_split_val_measures_on_the_heldout_rows(data_root, tmp_path, monkeypatch):
    import clbench.evaluation

    seen = []
    real = clbench.evaluation.evaluate_row
    monkeypatch.setattr(clbench.evaluation, "evaluate_row", lambda m, exps, **kw: seen.append(exps) or real(m, exps, **kw))
    cfg = config(strategy="naive", val_fraction=0.2, eval_split="val")
    result = run_cell(cfg, tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "ok", result["error"]
    reference = build(cfg, data_root)
    full = build(config(), data_root)
    expected = [sum(round(0.2 * int((e.y == c).sum())) for c in range(10)) for e in full.train]
    assert result["n_test"] == result["scenario_info"]["validation"]["val_sizes"] == expected
    for row_exps in seen:
        for got, want in zip(row_exps, reference.test, strict=True):
            assert torch.equal(got.x.index, want.x.index) and torch.equal(got.y, want.y)
    # With eval_split "test" the same held-out split leaves the test experiences alone.
    on_test = run_cell(config(val_fraction=0.2), tmp_path / "t", data_root=data_root, progress=False)
    assert on_test["n_test"] == [256, 256, 256] and on_test["scenario_info"]["validation"]["eval_split"] == "test"


def test_plain_tensor_and_sequence_targets():
    """Text streams hold token tensors; language modelling has [N, L] targets (one stratum)."""
    info = ScenarioInfo("toy", "class_il", 2, 4, (5,), [[0, 1], [2, 3]])
    y = torch.arange(40) % 2
    train = [ExperienceTensors(torch.arange(200).view(40, 5), y + 2 * e, 0) for e in range(2)]
    out = with_validation(TensorStream(info, train, []), 0.25, "val", stream_seed=0)
    for e in range(2):
        rows = set(out.train[e].x[:, 0].tolist()) | set(out.test[e].x[:, 0].tolist())
        assert rows == set(train[e].x[:, 0].tolist()) and len(out.test[e]) == 10
        assert sorted(out.test[e].y.tolist()) == [2 * e] * 5 + [2 * e + 1] * 5
    lm = [ExperienceTensors(torch.zeros(30, 4), torch.zeros(30, 4, dtype=torch.long), 0)]
    assert len(with_validation(TensorStream(info, lm, []), 0.1, "val", 0).test[0]) == 3


def test_text_stream_without_official_val_uses_val_fraction(tmp_path):
    write_banking(tmp_path, categories=[f"intent_{i:02d}" for i in range(77)])  # 4 train rows per intent
    cfg = resolve_config("banking77", "naive", seed=0, profile="full", overrides={
        "scenario.val_fraction": 0.5, "scenario.eval_split": "val"})
    full = build(resolve_config("banking77", "naive", seed=0, profile="full"), tmp_path)
    split = build(cfg, tmp_path)
    for e, exp in enumerate(full.train):
        assert len(split.train[e]) == len(split.test[e]) == len(exp) // 2  # 2 of every intent's 4 rows
        rows = torch.cat([split.train[e].x, split.test[e].x])
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, exp.x.tolist()))


def test_clinc150_keeps_its_official_val_split():
    cfg = resolve_config("clinc150", "naive", seed=0, profile="smoke", overrides={"scenario.eval_split": "val"})
    assert cfg.scenario_args["eval_split"] == "val" and "val_fraction" not in cfg.scenario_args


@pytest.mark.parametrize(("key", "value", "message"), [
    ("val_fraction", 0.7, "bad scenario.val_fraction 0.7; accepted: 0 (off) or a number in (0, 0.5]"),
    ("val_fraction", -0.1, "bad scenario.val_fraction -0.1"),
    ("val_fraction", "half", "bad scenario.val_fraction 'half'"),
    ("val_fraction", True, "bad scenario.val_fraction True"),
    ("eval_split", "train", "bad scenario.eval_split 'train'; accepted: test, val"),
    ("eval_split", "val", "needs scenario.val_fraction in (0, 0.5]"),
    ("stream_seed", -1, "bad scenario.stream_seed -1"),
])
def test_bad_protocol_values_are_one_clear_error(key, value, message):
    with pytest.raises(ConfigError) as info:
        config(**{key: value})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_rejects_a_bad_val_fraction_and_writes_nothing(tmp_path, capsys):
    from clbench.cli import main

    code = main(["run", "--scenario", "pmnist", "--strategy", "naive", "--profile", "smoke",
                 "--set", "scenario.val_fraction=0.9", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("clbench: error: bad scenario.val_fraction 0.9") and "\n" not in err
    assert not (tmp_path / "run").exists()
