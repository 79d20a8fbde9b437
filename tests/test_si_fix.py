"""Avalanche 0.6's SI does nothing on CPU (aliased weight snapshots); ours does."""

from __future__ import annotations

from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.strategies import si

TINY = {"scenario.n_experiences": 2, "scenario.train_per_exp": 256, "scenario.test_per_exp": 128, "lr": 0.1}


def run(strategy, tmp_path, data_root, **extra):
    cfg = resolve_config("pmnist", strategy, profile="smoke", overrides={**TINY, **extra})
    result = run_cell(cfg, tmp_path / f"{strategy}_{len(extra)}", data_root=data_root, progress=False)
    assert result["status"] == "ok", result["traceback"]
    return result["matrix"]


def test_stock_si_equals_naive_on_cpu_and_the_fix_changes_that(tmp_path, data_root, monkeypatch):
    naive = run("naive", tmp_path, data_root)
    # Stock Avalanche: build() would install the fix, so keep the stock helper in place.
    monkeypatch.setattr(si, "install_si_fix", lambda enabled=True: None)
    si.SynapticIntelligencePlugin.extract_weights = staticmethod(si._stock_extract_weights)
    stock = run("si", tmp_path, data_root, **{"strategy.si_lambda": 1000.0})
    assert stock == naive  # the penalty is exactly zero
    monkeypatch.undo()
    fixed = run("si", tmp_path, data_root, **{"strategy.si_lambda": 1000.0, "strategy.eps": 0.1001})
    assert fixed != naive


def test_fixed_snapshot_is_a_copy():
    import torch

    model = torch.nn.Linear(3, 2)
    plugin = si.SynapticIntelligencePlugin(si_lambda=1.0)
    si.SynapticIntelligencePlugin.create_syn_data(model, plugin.ewc_data, plugin.syn_data, set())
    si.install_si_fix()
    si.SynapticIntelligencePlugin.extract_weights(model, plugin.syn_data["old_theta"], set())
    before = plugin.syn_data["old_theta"]["weight"].data.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert torch.equal(plugin.syn_data["old_theta"]["weight"].data, before)
