"""Anytime evaluation (train.eval_every): the curve it stores, and that training is untouched."""

from __future__ import annotations

import json

import pytest

from clbench.config import RunConfig
from clbench.errors import ConfigError
from clbench.report.load import validate_result
from clbench.resolve import resolve_config
from clbench.runner import run_cell

# 3 experiences of 128 images at minibatch 32: 4 iterations each. 100 test images each.
TINY = {"scenario.n_experiences": 3, "scenario.train_per_exp": 128, "scenario.test_per_exp": 100}
PER_EXP = 4


def cell(strategy="naive", model=None, **extra):
    overrides = dict(TINY, **extra)
    if model:
        overrides["model"] = model
    return resolve_config("pmnist", strategy, seed=3, profile="smoke", overrides=overrides)


@pytest.mark.parametrize("strategy,model", [("naive", None), ("replay", None), ("ewc", None), ("cms", "cms_mlp")])
def test_the_curve_does_not_change_training(tmp_path, data_root, strategy, model):
    """Same matrix, bit for bit, with and without the curve: its subsets use their own
    generator and its evaluations leave the model, the optimizer and the RNG alone."""
    plain = run_cell(cell(strategy, model), tmp_path / "plain", data_root=data_root, progress=False)
    curved = run_cell(cell(strategy, model, **{"train.eval_every": 1, "train.eval_subset": 30}),
                      tmp_path / "curved", data_root=data_root, progress=False)
    assert plain["status"] == curved["status"] == "ok", (plain["error"], curved["error"])
    assert "anytime" not in plain
    assert curved["matrix"] == plain["matrix"] and curved["initial"] == plain["initial"]


def test_with_whole_test_sets_the_curve_meets_the_matrix(tmp_path, data_root):
    """eval_subset >= the test set scores every test image, so at each switch the curve holds
    exactly the end-of-experience row of the matrix on the tasks seen so far."""
    result = run_cell(cell(**{"train.eval_every": 3, "train.eval_subset": 1000}), tmp_path,
                      data_root=data_root, progress=False)
    curve = result["anytime"]
    assert curve["subset_size"] == [100, 100, 100]
    assert curve["boundaries"] == [0, PER_EXP, 2 * PER_EXP]
    points = list(zip(curve["iteration"], curve["experience"], curve["values"], strict=True))
    assert points[0] == (0, 0, [result["initial"][0], None, None])
    for i in range(1, 3):  # the point at switch i: the model trained through experience i - 1
        at_switch = [v for it, e, v in points if it == curve["boundaries"][i] and e == i][0]
        assert at_switch[:i + 1] == result["matrix"][i - 1][:i + 1]
        assert at_switch[i + 1:] == [None] * (2 - i)
    assert points[-1][0] == 3 * PER_EXP and points[-1][2] == result["matrix"][-1]
    # every 3 iterations counted from each switch (not 3, 6, 9: the grid restarts), the switch
    # itself, and the end of the stream
    assert curve["iteration"] == [0, 3, 4, 7, 8, 11, 12]
    assert curve["experience"] == [0, 0, 1, 1, 2, 2, 2]
    assert validate_result(json.loads(json.dumps(result))) == ""


def test_the_curve_time_is_not_counted_as_training(tmp_path, data_root, monkeypatch):
    import time

    from clbench import anytime

    real = anytime.AnytimeEvaluation._accuracy_in_one_pass

    def slow(self, model, seen):
        time.sleep(0.05)
        return real(self, model, seen)

    monkeypatch.setattr(anytime.AnytimeEvaluation, "_accuracy_in_one_pass", slow)
    result = run_cell(cell(**{"train.eval_every": 1}), tmp_path, data_root=data_root, progress=False)
    # 12 points inside training (one per iteration) have slept 0.6 s that train_seconds must not hold
    assert result["anytime"]["seconds"] >= 0.05 * 15
    assert result["train_seconds"] < 0.5


def test_subsets_are_fixed_by_the_seed():
    import torch

    from clbench.anytime import fixed_subsets

    class Exp:
        def __init__(self, n, task):
            self.x, self.y, self.task = torch.arange(n).float()[:, None], torch.arange(n), task

    tests = [Exp(50, 0), Exp(8, 1)]
    a, b, c = fixed_subsets(tests, 10, 1), fixed_subsets(tests, 10, 1), fixed_subsets(tests, 10, 2)
    assert [s.y.tolist() for s in a] == [s.y.tolist() for s in b]
    assert a[0].y.tolist() != c[0].y.tolist()
    assert len(a[0].y) == 10 and a[1].y.tolist() == list(range(8))  # a short experience is scored whole
    assert a[1].task == 1 and a[0].y.tolist() == sorted(a[0].y.tolist())


def test_config_hash_is_unchanged_when_off_and_values_are_checked():
    base = RunConfig("pmnist", "naive")
    off = RunConfig("pmnist", "naive")
    off.train.eval_subset = 7  # ignored while eval_every is 0
    on = RunConfig("pmnist", "naive")
    on.train.eval_every = 10
    assert base.config_hash() == off.config_hash() != on.config_hash()
    with pytest.raises(ConfigError, match=r"eval_every=-1.*eval_every must be >= 0"):
        resolve_config("pmnist", "naive", profile="smoke", overrides={"train.eval_every": -1})
    with pytest.raises(ConfigError, match=r"eval_subset=0"):
        resolve_config("pmnist", "naive", profile="smoke", overrides={"eval_every": 5, "eval_subset": 0})


def test_schema_versions_and_bad_curves():
    result = {
        "schema_version": 1, "status": "ok", "cell_id": "s__l__seed0__h", "scenario": "s", "strategy": "l",
        "label": "l", "config_hash": "h", "metric_name": "accuracy", "train_seconds": 1.0, "eval_seconds": 1.0,
        "wall_seconds": 1.0, "peak_rss_mb": 1.0, "num_params": 1, "seed": 0, "higher_is_better": True,
        "n_experiences": 2, "matrix": [[0.5, 0.1], [0.4, 0.6]], "initial": [0.1, 0.1],
    }
    assert validate_result(result) == ""  # version 1 still reads
    curve = {"iteration": [0, 1], "experience": [0, 0], "values": [[0.1, None], [0.2, None]], "boundaries": [0]}
    assert validate_result(dict(result, schema_version=2, anytime=curve)) == ""
    short = dict(curve, values=[[0.1, None]])
    assert "anytime lists differ in length" in validate_result(dict(result, schema_version=2, anytime=short))
    wide = dict(curve, values=[[0.1], [0.2]])
    assert "anytime values[0] is not a list of 2 numbers" in validate_result(dict(result, schema_version=2, anytime=wide))
    assert "unknown schema version 3" in validate_result(dict(result, schema_version=3))


def test_evaluation_runs_in_eval_mode_and_restores_train_mode():
    import torch

    from clbench.anytime import AnytimeEvaluation, SubsetExperience

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.modes = torch.nn.Linear(2, 3), []

        def forward(self, x):
            self.modes.append(self.training)
            return self.linear(x)

    model = Spy().train()
    subsets = [SubsetExperience(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), 0)] * 2
    plugin = AnytimeEvaluation(subsets, 1, device="cpu", batch_size=4, metric="accuracy")
    plugin.start_experience(1, model)
    assert model.modes == [False, False, False] and model.training  # 10 samples in batches of 4
    assert plugin.points[0][:2] == (0, 1) and len(plugin.points[0][2]) == 2
