"""Scenario construction: splits, label spaces, permutations and the CIFAR path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clbench.registry import SCENARIOS
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.scenarios.lazy import materialize
from clbench.scenarios.mnist import load_normalized

from .test_datasets import write_cifar_pickles


def build(name, data_root, seed=0, profile="smoke", **options):
    spec = SCENARIOS.get(name)
    cfg = resolve_config(name, "naive", seed=seed, profile=profile, overrides={f"scenario.{k}": v for k, v in options.items()})
    return spec.builder(spec.options(**cfg.scenario_args), profile, seed, data_root, False)


def test_class_il_keeps_labels_task_il_remaps_them(data_root):
    cil = build("split_mnist", data_root, train_per_exp=50, test_per_exp=20)
    til = build("split_mnist_til", data_root, train_per_exp=50, test_per_exp=20)
    order = cil.info.extra["class_order"]
    for e in range(5):
        classes = order[2 * e: 2 * e + 2]
        assert set(cil.train[e].y.tolist()) <= set(classes) and cil.train[e].task == 0
        assert set(til.train[e].y.tolist()) <= {0, 1} and til.train[e].task == e
        assert cil.info.classes_per_exp[e] == classes
    assert cil.info.n_classes == 10 and cil.info.scenario_type == "class_il"


def test_pmnist_applies_the_same_permutation_to_train_and_test(data_root):
    stream = build("pmnist", data_root, n_experiences=2, train_per_exp=None, test_per_exp=None)
    x_tr, _, x_te, _ = load_normalized(data_root, "mnist", False)
    for e in range(2):
        perm = torch.tensor(stream.info.extra["domain"][e]["permutation"])
        assert torch.equal(materialize(stream.train[e].x).flatten(1), x_tr.flatten(1)[:, perm])
        assert torch.equal(materialize(stream.test[e].x).flatten(1), x_te.flatten(1)[:, perm])
    first, second = (d["permutation"] for d in stream.info.extra["domain"])
    assert first != second and sorted(first) == list(range(784))


def test_rotated_mnist_uses_given_angles(data_root):
    stream = build("rotated_mnist", data_root, n_experiences=2, angles=[0.0, 90.0], train_per_exp=10, test_per_exp=None)
    assert [d["angle"] for d in stream.info.extra["domain"]] == [0.0, 90.0]
    _, _, x_te, _ = load_normalized(data_root, "mnist", False)
    assert torch.allclose(materialize(stream.test[0].x), x_te, atol=1e-5)
    # 90 degrees counter-clockwise is an exact pixel permutation.
    assert torch.allclose(materialize(stream.test[1].x), torch.rot90(x_te, 1, dims=(-2, -1)), atol=1e-5)


def test_split_needs_a_divisor_of_the_classes(data_root):
    from clbench.errors import ConfigError

    with pytest.raises(ConfigError, match="does not divide the 10 classes"):
        build("split_mnist", data_root, n_experiences=3)


@pytest.fixture()
def cifar_root(tmp_path):
    write_cifar_pickles(tmp_path, bytes_keys=True, per_class=4)
    return tmp_path


def test_split_cifar100_from_the_pickle_layout(cifar_root):
    stream = build("split_cifar100", cifar_root, train_per_class=3, test_per_class=2)
    assert len(stream.train) == 10 and stream.info.n_classes == 100
    assert all(len(e) == 30 for e in stream.train) and all(len(e) == 20 for e in stream.test)
    assert stream.train[0].x.shape[1:] == (3, 32, 32) and stream.train[0].x.dtype == torch.float32
    # Normalised with the canonical CIFAR-100 statistics: random uint8 pixels average ~127.5.
    assert abs(stream.train[0].x[:][:, 0].mean().item() - (0.5 - 0.5071) / 0.2673) < 0.1
    til = build("split_cifar100_til", cifar_root, n_experiences=20, train_per_class=2, test_per_class=1)
    assert len(til.train) == 20 and set(til.train[3].y.tolist()) <= set(range(5))


def test_split_cifar100_cell_trains_the_slim_resnet(cifar_root, tmp_path):
    cfg = resolve_config("split_cifar100", "naive", profile="smoke", overrides={
        "scenario.n_experiences": 2, "scenario.train_per_class": 2, "scenario.test_per_class": 1, "train_mb_size": 20,
    })
    assert cfg.model == "slim_resnet18"
    result = run_cell(cfg, tmp_path, data_root=cifar_root, progress=False)
    assert result["status"] == "ok", result["traceback"]
    assert np.array(result["matrix"]).shape == (2, 2) and result["num_params"] > 1_000_000
