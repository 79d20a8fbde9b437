"""Every registered baseline trains on every scenario type it declares.

This is what catches Avalanche incompatibilities (LwF and multi-head models,
DER without task labels, iCaRL's class bookkeeping) before a suite does.
"""

from __future__ import annotations

import pytest

from clbench.registry import STRATEGIES
from clbench.resolve import resolve_config
from clbench.runner import run_cell

SCENARIO_BY_TYPE = {"domain_il": "pmnist", "class_il": "split_mnist", "task_il": "split_mnist_til"}
TINY = {
    "pmnist": {"scenario.n_experiences": 2, "scenario.train_per_exp": 64, "scenario.test_per_exp": 40},
    "split_mnist": {"scenario.train_per_exp": 40, "scenario.test_per_exp": 20},
    "split_mnist_til": {"scenario.train_per_exp": 40, "scenario.test_per_exp": 20},
}
# Keep the rehearsal methods' buffers and GEM's quadratic programs small.
SMALL_MEMORY = {"gem": {"strategy.patterns_per_exp": 16}, "agem": {"strategy.patterns_per_exp": 16,
                "strategy.sample_size": 16}, "gdumb": {"strategy.mem_size": 60}, "icarl": {"strategy.memory_size": 60}}

CASES = [
    (strategy, SCENARIO_BY_TYPE[kind])
    for strategy in STRATEGIES.names()
    for kind in STRATEGIES.get(strategy).supports
]


@pytest.mark.slow
@pytest.mark.parametrize("strategy, scenario", CASES)
def test_strategy_runs_on_supported_scenario(strategy, scenario, tmp_path, data_root):
    overrides = {**TINY[scenario], **SMALL_MEMORY.get(strategy, {})}
    cfg = resolve_config(scenario, strategy, profile="smoke", overrides=overrides)
    result = run_cell(cfg, tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "ok", result["traceback"]
    t = result["n_experiences"]
    assert len(result["matrix"]) == t and all(len(row) == t for row in result["matrix"])


def test_every_baseline_of_the_issue_is_registered():
    expected = {"naive", "joint", "cumulative", "ewc", "online_ewc", "si", "lwf", "mas", "replay", "gem", "agem",
                "der", "er_ace", "gdumb", "icarl"}
    assert expected <= set(STRATEGIES.names())
    assert STRATEGIES.get("icarl").supports == ("class_il",)


def test_lwf_alpha_scale_multiplies_the_per_experience_alphas():
    """The knob `clbench tune` searches for LwF: the schedule keeps its shape, its strength scales."""
    import torch

    from clbench.runner import build_strategy
    from clbench.scenarios.stream import ScenarioInfo

    info = ScenarioInfo("split_mnist", "class_il", 5, 10, (1, 28, 28), [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    stream = type("Stream", (), {"info": info})()
    scaled = resolve_config("split_mnist", "lwf", profile="smoke", overrides={"strategy.alpha_scale": 2.0})
    _, strategy = build_strategy(scaled, stream, torch.device("cpu"))
    lwf = next(p for p in strategy.plugins if type(p).__name__ == "LwFPlugin")
    assert lwf.lwf.alpha == [0.0, 1.0, 2.66, 4.5, 6.4]  # 2 x split_mnist's schedule
    single = resolve_config("pmnist", "lwf", profile="smoke", overrides={"strategy.alpha_scale": 0.25})
    _, strategy = build_strategy(single, stream, torch.device("cpu"))
    assert next(p for p in strategy.plugins if type(p).__name__ == "LwFPlugin").lwf.alpha == 0.25
