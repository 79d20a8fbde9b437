"""Lazy streams (scenarios/lazy.py) give bitwise what materialised streams gave.

The references below rebuild each stream the way the code did before streams
became lazy: normalise a whole split into float32, subsample it, then permute,
rotate or split the resulting tensors. The lazy streams must hold the same values
and, trained through Avalanche (batched fetch, per-item fetch, batched
evaluation), give the same accuracy matrices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from clbench.registry import SCENARIOS
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.scenarios import validation
from clbench.scenarios.datasets import load_mnist
from clbench.scenarios.lazy import LazyRows, materialize, shared_arrays
from clbench.scenarios.mnist import NORMALIZATION, load_raw
from clbench.scenarios.stream import ExperienceTensors, TensorStream


def _old_normalized(root):
    mean, std = NORMALIZATION["mnist"]
    out = []
    for split in ("train", "test"):
        x, y = load_mnist(root, split, download=False)
        out += [((x.float() / 255.0 - mean) / std).unsqueeze(1), y.long()]
    return out


def _old_subsample(x, y, n, rng):
    if n is None or n >= len(y):
        return x, y
    idx = torch.from_numpy(np.sort(rng.choice(len(y), size=n, replace=False)))
    return x[idx], y[idx]


def old_domain_xs(root, kind, n_exp, train_n, test_n, seed):
    """(train xs, test xs) as the materialising code built them."""
    x_tr, y_tr, x_te, y_te = _old_normalized(root)
    rng = np.random.RandomState(seed)
    train, test = [], []
    fill = -NORMALIZATION["mnist"][0] / NORMALIZATION["mnist"][1]
    for _ in range(n_exp):
        if kind == "pmnist":
            perm = torch.from_numpy(rng.permutation(784))
            transform = lambda x, perm=perm: x.flatten(1)[:, perm].view_as(x)  # noqa: E731
        else:
            angle = float(rng.uniform(0, 180))
            transform = lambda x, angle=angle: TF.rotate(x, angle, fill=fill)  # noqa: E731
        for x, y, n, out in ((x_tr, y_tr, train_n, train), (x_te, y_te, test_n, test)):
            xs, _ = _old_subsample(x, y, n, rng)
            out.append(transform(xs))
    return train, test


def old_split_xs(root, order, n_exp, train_n, test_n, seed):
    x_tr, y_tr, x_te, y_te = _old_normalized(root)
    rng = np.random.RandomState(seed)
    k = 10 // n_exp
    train, test = [], []
    for e in range(n_exp):
        for x, y, n, out in ((x_tr, y_tr, train_n, train), (x_te, y_te, test_n, test)):
            mask = torch.isin(y, torch.tensor(order[e * k:(e + 1) * k]))
            out.append(_old_subsample(x[mask], y[mask], n, rng)[0])
    return train, test


CASES = {  # scenario -> smoke-sized options
    "pmnist": {"n_experiences": 2, "train_per_exp": 200, "test_per_exp": 100},
    "rotated_mnist": {"n_experiences": 2, "train_per_exp": 200, "test_per_exp": 100},
    "split_mnist": {"train_per_exp": 100, "test_per_exp": 60},
}


def _config(scenario, strategy="naive", seed=3, **extra):
    overrides = {f"scenario.{k}": v for k, v in CASES[scenario].items()} | extra
    return resolve_config(scenario, strategy, seed=seed, profile="smoke", overrides=overrides)


def _build(cfg, data_root):
    return validation.build_stream(SCENARIOS.get(cfg.scenario), cfg.scenario_args, cfg.profile, cfg.seed, data_root, False)


@pytest.mark.parametrize("scenario", list(CASES))
def test_lazy_inputs_equal_the_materialised_stream_bitwise(scenario, data_root):
    cfg = _config(scenario)
    stream = _build(cfg, data_root)
    o = CASES[scenario]
    if scenario == "split_mnist":
        train, test = old_split_xs(data_root, stream.info.extra["class_order"], 5, o["train_per_exp"], o["test_per_exp"], 3)
    else:
        train, test = old_domain_xs(data_root, scenario, 2, o["train_per_exp"], o["test_per_exp"], 3)
    for lazy_exps, reference in ((stream.train, train), (stream.test, test)):
        for exp, ref in zip(lazy_exps, reference, strict=True):
            assert isinstance(exp.x, LazyRows) and exp.x.shape == ref.shape and exp.x.dtype == ref.dtype
            assert torch.equal(materialize(exp.x), ref)
            # Per-item and per-batch decoding give the same rows as the whole.
            assert torch.equal(exp.x[7], ref[7]) and torch.equal(exp.x[torch.tensor([5, 0, 9])], ref[[5, 0, 9]])
            assert torch.equal(exp.x[10:42], ref[10:42])


def _materialised(stream: TensorStream) -> TensorStream:
    def solid(exps):
        return [ExperienceTensors(materialize(e.x), e.y, e.task) for e in exps]

    return TensorStream(stream.info, solid(stream.train), solid(stream.test))


@pytest.mark.parametrize(("scenario", "strategy"), [("pmnist", "replay"), ("rotated_mnist", "ewc"), ("split_mnist", "naive")])
@pytest.mark.parametrize("fast", ["1", "0"])
def test_lazy_and_materialised_streams_train_to_the_same_matrix(scenario, strategy, fast, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_FAST_DATA", fast)  # "0": Avalanche's per-item path
    cfg = _config(scenario, strategy)
    lazy = run_cell(cfg, tmp_path / "lazy", data_root=data_root, progress=False)
    real_build = validation.build_stream
    monkeypatch.setattr(validation, "build_stream", lambda *a: _materialised(real_build(*a)))
    solid = run_cell(cfg, tmp_path / "solid", data_root=data_root, progress=False)
    assert lazy["status"] == solid["status"] == "ok", (lazy["error"], solid["error"])
    assert lazy["matrix"] == solid["matrix"] and lazy["initial"] == solid["initial"]


def test_every_experience_shares_one_base(data_root):
    stream = _build(_config("pmnist"), data_root)
    bases = {e.x.base.data_ptr() for e in stream.train + stream.test}
    assert len(bases) == 2 and all(e.x.base.dtype == torch.uint8 for e in stream.train)  # train and test splits


def test_bases_are_memory_mapped_from_one_cached_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "images.bin"
    source.write_bytes(b"v1")
    calls = []

    def build():
        calls.append(1)
        return torch.arange(6, dtype=torch.uint8).view(2, 3), torch.tensor([4, 5])

    first = shared_arrays("toy", [source], build)
    again = shared_arrays("toy", [source], build)
    assert len(calls) == 1 and torch.equal(again[0], build()[0]) and torch.equal(again[1], torch.tensor([4, 5]))
    calls.clear()
    # Mapped from the cache file (every process maps the same pages), not copied into this one.
    mapped = {line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().endswith(".npy")}
    assert len(list((tmp_path / "cache" / "bases").glob("toy-*.npy"))) == 2
    assert {str(p) for p in (tmp_path / "cache" / "bases").glob("toy-*.npy")} <= mapped
    source.write_bytes(b"v2, longer")  # a changed source misses the cache and is loaded again
    shared_arrays("toy", [source], build)
    assert len(calls) == 1 and torch.equal(first[0], again[0])


def test_mnist_base_is_shared_through_the_cache(data_root):
    x_tr, y_tr, x_te, y_te = load_raw(data_root, "mnist", False)
    ref_x, ref_y = load_mnist(data_root, "train", download=False)
    assert torch.equal(x_tr, ref_x) and torch.equal(y_tr, ref_y.long()) and x_tr.dtype == torch.uint8
    maps = open("/proc/self/maps").read()
    assert "bases/mnist-train-" in maps and "bases/mnist-test-" in maps


def test_a_changed_data_file_is_loaded_again_in_the_same_process(tmp_path):
    import os

    from .conftest import write_synthetic_mnist

    write_synthetic_mnist(tmp_path, "MNIST", n_train=50, n_test=20, seed=0)
    before = load_raw(tmp_path, "mnist", False)[0].clone()
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    write_synthetic_mnist(tmp_path, "MNIST", n_train=50, n_test=20, seed=1)
    os.utime(images, ns=(images.stat().st_atime_ns, images.stat().st_mtime_ns + 10**9))  # a coarse clock
    after = load_raw(tmp_path, "mnist", False)[0]
    assert not torch.equal(before, after) and torch.equal(after, load_mnist(tmp_path, "train", download=False)[0])


def test_split_cifar100_rows_equal_the_whole_split_normalised_at_once(tmp_path):
    from clbench.scenarios.cifar100 import MEAN, STD
    from clbench.scenarios.cifar100_data import load_cifar100

    from .test_datasets import write_cifar_pickles

    write_cifar_pickles(tmp_path, bytes_keys=True, per_class=4)
    cfg = resolve_config("split_cifar100", "naive", seed=1, profile="smoke", overrides={
        "scenario.train_per_class": 3, "scenario.test_per_class": 2})
    stream = _build(cfg, tmp_path)
    for split, exps in (("train", stream.train), ("test", stream.test)):
        raw = load_cifar100(tmp_path, split, download=False).x
        whole = (raw.permute(0, 3, 1, 2).float().div_(255.0) - MEAN) / STD  # how the stream was built before
        for exp in exps:
            assert torch.equal(materialize(exp.x), whole[exp.x.index]) and torch.equal(exp.x[2], whole[exp.x.index[2]])
