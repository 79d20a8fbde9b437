"""FastEWCPlugin is a drop-in for Avalanche's EWCPlugin: bitwise-identical Fisher and training."""

from __future__ import annotations

import pytest
import torch
from avalanche.training import EWC
from avalanche.training.plugins import EWCPlugin
from torch import nn

from clbench import fastdata
from clbench.models import MultiHeadNet, TaskHeads, mlp_features
from clbench.scenarios.stream import ExperienceTensors, to_avalanche_dataset
from clbench.strategies.ewc import FastEWCPlugin


def experience(n: int, task: int, seed: int) -> ExperienceTensors:
    g = torch.Generator().manual_seed(seed)
    return ExperienceTensors(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g), task)


def single_head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(mlp_features(16, hidden=8), nn.Linear(8, 3))


def multi_head() -> nn.Module:
    torch.manual_seed(0)
    return MultiHeadNet(mlp_features(16, hidden=8), TaskHeads(8, n_tasks=2, classes_per_task=3))


def importances(plugin, model, dataset, batch_size):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return plugin.compute_importances(model, nn.CrossEntropyLoss(), optimizer, dataset, "cpu", batch_size)


@pytest.mark.parametrize("build_model, task", [(single_head, 0), (multi_head, 1)])
@pytest.mark.parametrize("batch_size", [7, 16, 200])  # ragged last batch, exact split, one batch
def test_importances_are_bitwise_identical(build_model, task, batch_size):
    dataset = to_avalanche_dataset(experience(48, task, seed=1))
    model = build_model()
    with fastdata.fast_fetch(False):
        expected = importances(EWCPlugin(1.0), model, dataset, batch_size)
    before = fastdata.stats["fast"]
    with fastdata.fast_fetch():
        got = importances(FastEWCPlugin(1.0), model, dataset, batch_size)
    assert fastdata.stats["fast"] > before  # the gathered path ran
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name].data, expected[name].data), name
    assert any(imp.data.abs().sum() > 0 for imp in got.values())
    assert model.training  # left in train mode, as Avalanche does


def test_importances_fall_back_to_the_loader_for_transformed_data():
    dataset = to_avalanche_dataset(experience(30, 0, seed=2)).replace_current_transform_group((lambda x: 2 * x, None))
    model = single_head()
    expected = importances(EWCPlugin(1.0), model, dataset, 8)
    with fastdata.fast_fetch():
        got = importances(FastEWCPlugin(1.0), model, dataset, 8)
    for name in expected:
        assert torch.equal(got[name].data, expected[name].data), name


@pytest.mark.parametrize("mode, extra", [("separate", {}), ("online", {"decay_factor": 0.9})])
def test_training_matches_avalanche_ewc(mode, extra):
    """Two experiences through Avalanche's EWC template vs SupervisedTemplate + FastEWCPlugin."""
    from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
        create_multi_dataset_generic_benchmark,
    )
    from avalanche.training.templates import SupervisedTemplate

    train = [to_avalanche_dataset(experience(40, 0, seed=s)) for s in (3, 4)]
    test = [to_avalanche_dataset(experience(10, 0, seed=s)) for s in (5, 6)]
    benchmark = create_multi_dataset_generic_benchmark(train, test)

    def train_with(make):
        model = single_head()
        strategy = make(model, dict(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
            train_mb_size=8, train_epochs=1, eval_mb_size=16, device="cpu", evaluator=None,
        ))
        torch.manual_seed(1)
        for exp in benchmark.train_stream:
            strategy.train(exp)
        return model

    with fastdata.fast_fetch(False):
        stock = train_with(lambda m, kw: EWC(ewc_lambda=100.0, mode=mode, **extra, **kw))
    with fastdata.fast_fetch():
        fast = train_with(lambda m, kw: SupervisedTemplate(plugins=[FastEWCPlugin(100.0, mode=mode, **extra)], **kw))
    for (name, a), b in zip(stock.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
