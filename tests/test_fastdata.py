"""The batched fetch path must be a drop-in: same items, same training runs."""

from __future__ import annotations

import torch
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from torch.utils.data import DataLoader

from clbench import fastdata
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.scenarios.stream import ExperienceTensors, TensorLeaf, to_avalanche_dataset


def experience(n, task, offset=0):
    g = torch.Generator().manual_seed(n + offset)
    return ExperienceTensors(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 10, (n,), generator=g), task)


def assert_same_items(dataset, indices, *, expect_fast=True):
    slow = [dataset[i] for i in indices]
    before = dict(fastdata.stats)
    with fastdata.fast_fetch():
        fast = dataset.__getitems__(indices)
    took_fast = fastdata.stats["fast"] > before["fast"]
    assert took_fast == expect_fast
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow, strict=True):
        assert type(f) is type(s) and len(f) == len(s)
        assert torch.equal(f[0], s[0])
        assert list(f[1:]) == list(s[1:])


def test_items_match_on_experiences_subsets_and_concatenations():
    a = to_avalanche_dataset(experience(50, task=0))
    b = to_avalanche_dataset(experience(30, task=3, offset=1))
    assert_same_items(a, [0, 49, 7, 7, 3])
    sub = a.subset([5, 1, 40, 2])
    assert_same_items(sub, [3, 0, 2])
    cat = a.concat(b).subset(list(range(70, 20, -3)))
    assert_same_items(cat, list(range(len(cat))))
    nested = cat.concat(sub.train()).eval()
    assert_same_items(nested, list(range(len(nested))))


def test_falls_back_when_a_transform_is_set():
    ds = to_avalanche_dataset(experience(20, task=0))
    shifted = ds.replace_current_transform_group((lambda x: x + 100.0, None))
    assert_same_items(shifted, [0, 5, 19], expect_fast=False)
    with fastdata.fast_fetch():
        assert shifted.__getitems__([0])[0][0].min() > 50


def test_falls_back_for_non_integer_attributes():
    # DER stores logits as a data attribute; those must come from Avalanche's own path.
    exp = experience(10, task=0)
    logits = [torch.randn(10) for _ in range(10)]
    ds = TaskAwareSupervisedClassificationDataset(
        [TensorLeaf(exp.x, exp.y)],
        data_attributes=[
            DataAttribute(exp.y.tolist(), "targets"),
            DataAttribute([0] * 10, "targets_task_labels", use_in_getitem=True),
            DataAttribute(logits, "logits", use_in_getitem=True),
        ],
    )
    assert_same_items(ds, [1, 2, 9], expect_fast=False)


def test_dataloader_batches_are_identical():
    ds = to_avalanche_dataset(experience(64, task=2))
    def batches(enabled):
        with fastdata.fast_fetch(enabled):
            torch.manual_seed(0)
            return list(DataLoader(ds, batch_size=16, shuffle=True, collate_fn=ds.collate_fn))
    for fast, slow in zip(batches(True), batches(False), strict=True):
        for f, s in zip(fast, slow, strict=True):
            assert torch.equal(f, s)


def test_training_runs_are_identical_with_and_without_fast_path(tmp_path, data_root, monkeypatch):
    """Naive, EWC and Replay (buffer loaders included) give the same matrices."""
    for strategy in ("naive", "ewc", "replay"):
        cfg = resolve_config("pmnist", strategy, profile="smoke", overrides={
            "scenario.n_experiences": 2, "scenario.train_per_exp": 96, "scenario.test_per_exp": 64,
        })
        before = fastdata.stats["fast"]
        fast = run_cell(cfg, tmp_path / f"fast_{strategy}", data_root=data_root, progress=False)
        assert fastdata.stats["fast"] > before
        with monkeypatch.context() as m:
            m.setenv("CLBENCH_FAST_DATA", "0")  # the runner's enable() becomes a no-op
            fastdata.disable()
            slow = run_cell(cfg, tmp_path / f"slow_{strategy}", data_root=data_root, progress=False)
        assert fast["status"] == slow["status"] == "ok"
        assert fast["matrix"] == slow["matrix"], strategy


def test_label_attributes_iterate_to_the_same_values():
    """Fast iteration of targets / task labels equals Avalanche's element-by-element walk."""
    a = to_avalanche_dataset(experience(40, task=0))
    b = to_avalanche_dataset(experience(25, task=4, offset=2))
    derived = a.concat(b).subset(list(range(64, 0, -5))).concat(a.subset([3, 3, 1]))
    tensor_labels = DataAttribute(list(torch.arange(6)), "odd")  # tensors: must stay tensors
    for ds in (a, b, derived):
        for attribute in (ds.targets, ds.targets_task_labels):
            with fastdata.fast_fetch(False):
                slow = list(attribute), attribute.uniques, dict(attribute.count)
            with fastdata.fast_fetch():
                fresh = DataAttribute(attribute.data, attribute.name)  # uncached uniques/count
                fast = list(attribute), fresh.uniques, dict(fresh.count)
                assert fastdata.int_values(attribute) is not None
            assert fast == slow and all(type(v) is int for v in fast[0])
    with fastdata.fast_fetch():
        assert fastdata.int_values(tensor_labels) is None
        assert all(isinstance(v, torch.Tensor) for v in tensor_labels)


def test_ffcv_check_is_short_circuited_only_without_ffcv(monkeypatch):
    from avalanche.benchmarks.utils import data_loader
    from avalanche.benchmarks.utils.ffcv_support import ffcv_components

    ds = to_avalanche_dataset(experience(10, task=0))
    with fastdata.fast_fetch():
        assert data_loader.has_ffcv_support is fastdata.has_ffcv_support
        monkeypatch.setattr(fastdata, "_ffcv_installed", lambda: False)
        assert fastdata.has_ffcv_support([ds]) is False
        monkeypatch.setattr(fastdata, "_ffcv_installed", lambda: True)  # then Avalanche decides
        monkeypatch.setattr(ffcv_components, "has_ffcv_support", lambda datasets: datasets == ["ready"])
        assert fastdata.has_ffcv_support(["ready"]) is True
    with fastdata.fast_fetch(False):
        assert data_loader.has_ffcv_support is not fastdata.has_ffcv_support
