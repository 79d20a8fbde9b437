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
