"""HOPE models and the `hope` strategy: tokenizers, size control, config checks, training end to end."""

from __future__ import annotations

import pytest
import torch

from clbench.errors import ConfigError
from clbench.models import MultiHeadNet, count_parameters
from clbench.nested.hope.model import find_hope_features
from clbench.nested.hope.zoo import build_hope, build_hope_attention, build_transformer_matched
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.scenarios.stream import ScenarioInfo

from .fitting import fit_fixed_batch

MNIST = ScenarioInfo("pmnist", "domain_il", 3, 10, (1, 28, 28), [list(range(10))] * 3)
CIFAR = ScenarioInfo("split_cifar100", "class_il", 10, 100, (3, 32, 32), [list(range(10))] * 10)
TEXT = ScenarioInfo("clinc", "class_il", 5, 150, (32,), [list(range(30))] * 5, extra={"vocab_size": 50, "max_len": 32})
TINY = {"scenario.n_experiences": 2, "scenario.train_per_exp": 64, "scenario.test_per_exp": 48}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("info, args, x, tokens", [
    (MNIST, {}, torch.randn(3, 1, 28, 28), 16),  # 7x7 patches
    (MNIST, {"tokenizer": "rows"}, torch.randn(3, 1, 28, 28), 28),
    (CIFAR, {}, torch.randn(3, 3, 32, 32), 64),  # 4x4x3 patches
    (CIFAR, {"tokenizer": "conv"}, torch.randn(3, 3, 32, 32), 64),
    (TEXT, {}, torch.randint(1, 50, (3, 32)), 32),  # token ids through the embedding
])
def test_tokenizers_and_output_shapes(info, args, x, tokens):
    model = build_hope(info, "smoke", **args)
    features = find_hope_features(model)
    assert features.tokenizer.n_tokens == tokens
    assert model(x).shape == (3, info.n_classes)


def test_readouts_and_task_il_heads():
    til = ScenarioInfo("split_mnist_til", "task_il", 5, 2, (1, 28, 28), [[0, 1]] * 5)
    model = build_hope(til, "smoke", readout="mean")
    assert isinstance(model, MultiHeadNet)
    out = model(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 1, 4]))
    assert out.shape == (4, 2)


def test_transformer_matched_has_about_hope_size():
    hope = count_parameters(build_hope(MNIST, "quick"))
    matched = count_parameters(build_transformer_matched(MNIST, "quick"))
    assert abs(matched - hope) / hope < 0.15, (matched, hope)
    assert count_parameters(build_hope_attention(MNIST, "quick")) > 0


def test_hope_overfits_a_tiny_fixed_stream():
    torch.manual_seed(0)
    model = build_hope(MNIST, "smoke")
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    first, last = fit_fixed_batch(model, x, y, steps=120)
    assert first > 2.0 and last < 0.3, (first, last)


@pytest.mark.parametrize("overrides, match", [
    ({"model": "hope_attention", "model.stop_grad_writes": True}, "unknown argument.*stop_grad_writes.*hope_attention"),
    ({"model.memory": "deep"}, "model 'hope': memory must be 'linear' or 'mlp'"),
    ({"model.chunk_mem": 0}, "chunk_mem must be an integer >= 1"),
    ({"model.reset": "sometimes"}, "unknown reset policy 'sometimes'; valid: example, experience, never"),
    ({"model.tokenizer": "pixels"}, "unknown tokenizer 'pixels'"),
])
def test_bad_options_are_rejected_at_config_time(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config("pmnist", "hope", profile="smoke", overrides={**TINY, **overrides})


def test_hope_strategy_needs_a_hope_model(tmp_path, data_root):
    cfg = resolve_config("pmnist", "hope", profile="smoke", overrides={**TINY, "model": "mlp"})
    result = run_cell(cfg, tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "failed"
    assert "strategy 'hope' needs a model with self-modifying Titans layers" in result["error"]


@pytest.mark.parametrize("overrides", [
    {},
    {"strategy.cms": False, "model.reset": "experience", "model.memory": "mlp"},
])
def test_hope_strategy_runs_end_to_end(tmp_path, data_root, overrides):
    cfg = resolve_config("pmnist", "hope", profile="smoke", overrides={**TINY, **overrides})
    assert cfg.train.optimizer == "adamw" and cfg.model == "hope"
    result = run_cell(cfg, tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "ok", result["error"]
    assert len(result["matrix"]) == 2 and result["num_params"] > 0
    assert all(0.0 <= a <= 1.0 for row in result["matrix"] for a in row)


def test_experience_reset_policy_clears_the_carried_state():
    from types import SimpleNamespace

    from clbench.strategies.hope import FastStateResetPlugin

    model = build_hope(MNIST, "smoke", reset="experience")
    features = find_hope_features(model)
    model.train()
    model(torch.randn(4, 1, 28, 28))
    layer = features.titans_layers()[0]
    assert layer.carried is not None
    FastStateResetPlugin(features).before_training_exp(SimpleNamespace())
    assert layer.carried is None
