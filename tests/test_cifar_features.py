"""The MobileNetV2 feature track: weights loading, per-image feature cache, the scenario.

Uses the real shared weights file and real CIFAR-100 (CLBENCH_DATA), a handful of images
per test; the scenario tests use the smoke profile (400 images, computed once per session).
"""

from __future__ import annotations

import multiprocessing as mp
import shutil

import numpy as np
import pytest
import torch

from clbench.config import check_dataclass_args
from clbench.errors import ConfigError, CorruptDataError, DataNotFoundError
from clbench.registry import SCENARIOS
from clbench.resolve import resolve_config
from clbench.runner import run_cell
from clbench.scenarios.cifar100_data import load_cifar100
from clbench.scenarios.cifar100_features import DEFAULT_RESOLUTION, CifarFeatureOptions
from clbench.scenarios.datasets import resolve_data_root
from clbench.scenarios.validation import build_stream
from clbench.vision import backbone as bb
from clbench.vision.features import FeatureTable, _fill_worker, cifar_table

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
ROOT = resolve_data_root(None)
WEIGHTS = ROOT / "weights" / bb.WEIGHTS_FILE
ROWS = [0, 1, 2, 3, 4, 5]


@pytest.fixture(autouse=True)
def _hub_dir(tmp_path_factory, monkeypatch):
    """A private torch hub dir per session: tests never touch the user's ~/.cache/torch."""
    assert WEIGHTS.is_file() and (ROOT / "CIFAR100" / "meta.json").is_file(), (
        f"these tests need the shared data (weights and CIFAR100) under {ROOT}; set CLBENCH_DATA"
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))


@pytest.fixture(scope="module")
def images():
    return load_cifar100(ROOT, "test", download=False).x[:8].clone()


def table(images, resolution=64, kind="pooled", root=ROOT):
    return FeatureTable(images, backbone="mobilenet_v2", resolution=resolution, kind=kind, data_root=root, download=False)


# ------------------------------------------------------------------ weights
def test_weights_are_copied_from_the_data_root_with_their_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path, sha = bb.ensure_weights(ROOT, download=False)
    assert path == tmp_path / "hub" / "hub" / "checkpoints" / bb.WEIGHTS_FILE and path.is_file()
    assert sha.startswith(bb.HASH_PREFIX) and sha == bb.sha256_file(WEIGHTS)


def test_missing_weights_offline_name_both_places(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(DataNotFoundError) as err:
        bb.ensure_weights(tmp_path / "empty_root", download=False)
    message = str(err.value)
    assert "\n" not in message and bb.WEIGHTS_FILE in message
    assert str(tmp_path / "empty_root" / "weights" / bb.WEIGHTS_FILE) in message
    assert str(tmp_path / "hub" / "hub" / "checkpoints" / bb.WEIGHTS_FILE) in message


def corrupt_copy(dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))


def test_corrupt_weights_in_the_data_root_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    corrupt_copy(tmp_path / "root" / "weights" / bb.WEIGHTS_FILE)
    with pytest.raises(CorruptDataError, match="refusing MobileNetV2 weights .*root/weights"):
        bb.ensure_weights(tmp_path / "root", download=False)
    assert not (tmp_path / "hub" / "hub" / "checkpoints" / bb.WEIGHTS_FILE).exists()


def test_corrupt_weights_in_the_hub_cache_are_refused_before_computing(tmp_path, monkeypatch, images):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    corrupt_copy(tmp_path / "hub" / "hub" / "checkpoints" / bb.WEIGHTS_FILE)
    with pytest.raises(CorruptDataError, match="refusing MobileNetV2 weights .*hub/checkpoints"):
        table(images)  # the good copy in the data root does not mask the bad cached one
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ features
def test_pooled_is_torchvision_classifier_input_and_tokens_the_map(images):
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    pooled, tokens = table(images, 96).get([0]), table(images, 96, "tokens").get([0])  # puts the weights in the hub
    model = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval()
    seen = []
    model.classifier.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.inference_mode():
        model(bb.preprocess(images[0], 96))
    assert torch.equal(pooled[0], seen[0][0])
    assert tokens.shape == (1, 9, 1280) and tokens.dtype == torch.float32
    assert torch.allclose(tokens[0].mean(0), pooled[0], atol=2e-3, rtol=2e-3)  # fp16-stored tokens


def test_values_do_not_depend_on_batch_order_cache_state_or_cache_off(tmp_path, monkeypatch, images):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "a"))
    cold = table(images).get(ROWS)
    alone = torch.stack([bb.extract(table(images)._features(), images[i], 64, "pooled") for i in ROWS])
    assert torch.equal(cold, alone)
    warm = table(images)
    assert warm.ensure(ROWS) == 0 and torch.equal(warm.get(ROWS), cold)  # read back, not recomputed
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "b"))
    other = table(images)
    parts = torch.cat([other.get([5, 2]), other.get([0, 4]), other.get([3, 1])])
    assert torch.equal(parts, cold[[5, 2, 0, 4, 3, 1]])
    monkeypatch.setenv("CLBENCH_CACHE", "off")
    memory = table(images)
    assert memory.folder is None and torch.equal(memory.get(ROWS[::-1]), cold.flip(0))
    assert not list((tmp_path / "b" / "features").glob("*/*.tmp"))


def test_two_worker_processes_fill_one_table_safely(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))  # spawned workers inherit the environment
    opts = dict(backbone="mobilenet_v2", resolution=64, kind="pooled", data_root=str(ROOT), download=False)
    jobs = [("test", np.array(rows), opts, False) for rows in ([0, 1, 2, 3, 4], [3, 4, 5, 6, 7])]
    with mp.get_context("spawn").Pool(2) as pool:
        computed = pool.map_async(_fill_worker, jobs, chunksize=1).get(timeout=300)
    assert sum(computed) >= 8
    warm = cifar_table("test", **opts)
    assert warm.ensure(range(8)) == 0  # every row written whole and with a valid checksum
    monkeypatch.setenv("CLBENCH_CACHE", "off")
    assert torch.equal(warm.get(range(8)), table(warm.images).get(range(8)))


def test_a_cache_of_another_resolution_backbone_build_or_image_set_is_not_reused(tmp_path, monkeypatch, images):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    base = table(images)
    base.ensure(ROWS)
    assert table(images).ensure(ROWS) == 0
    assert table(images, resolution=96).ensure(ROWS) == len(ROWS)
    assert table(images, kind="tokens").ensure(ROWS) == len(ROWS)
    assert table(images.flip(0)).ensure(ROWS) == len(ROWS)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert table(images).ensure(ROWS) == len(ROWS)
    monkeypatch.setattr(bb, "sha256_file", lambda path: bb.HASH_PREFIX + "0" * 56)  # other weights, same prefix
    other = table(images)
    assert other.folder != base.folder and other.ensure(ROWS) == len(ROWS)
    assert len(list((tmp_path / "features").iterdir())) == 6


def test_corrupt_or_truncated_cache_entries_are_recomputed(tmp_path, monkeypatch, images):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    good = table(images).get(ROWS)
    values = table(images).folder / "values.npy"
    raw = bytearray(values.read_bytes())
    header = len(raw) - 8 * 1280 * 4
    raw[header + 2 * 1280 * 4 + 100] ^= 0x40  # a flipped bit in row 2
    values.write_bytes(bytes(raw))
    fresh = table(images)
    assert fresh.ensure(ROWS) == 1 and torch.equal(fresh.get(ROWS), good)
    values.write_bytes(values.read_bytes()[: header + 3 * 1280 * 4 + 17])  # cut inside row 3
    fresh = table(images)
    assert fresh.ensure(ROWS) == 3 and torch.equal(fresh.get(ROWS), good)  # rows 3, 4, 5 were lost
    values.write_bytes(values.read_bytes()[:40])  # cut inside the header: the table is rebuilt
    fresh = table(images)
    assert fresh.ensure(ROWS) == len(ROWS) and torch.equal(fresh.get(ROWS), good)


# ------------------------------------------------------------------ scenario
def build(scenario="split_cifar100_features", seed=0, **overrides):
    cfg = resolve_config(scenario, "naive", seed=seed, profile="smoke",
                         overrides={f"scenario.{k}": v for k, v in overrides.items()})
    return build_stream(SCENARIOS.get(cfg.scenario), cfg.scenario_args, cfg.profile, cfg.seed, ROOT, False)


def test_stream_matches_split_cifar100_and_describes_its_features():
    feats = build(seed=3)
    images = build("split_cifar100", seed=3, train_per_class=2, test_per_class=2)
    assert feats.info.classes_per_exp == images.info.classes_per_exp
    assert feats.info.extra["class_order"] == images.info.extra["class_order"]
    for a, b in zip(feats.train + feats.test, images.train + images.test, strict=True):
        assert torch.equal(a.y, b.y) and torch.equal(a.x.base[a.x.index], b.x.index)  # same images
    assert feats.info.input_shape == (1280,) and feats.train[0].x[:3].shape == (3, 1280)
    assert feats.train[0].x[:3].dtype == torch.float32
    assert feats.info.scenario_type == "class_il" and SCENARIOS.get("split_cifar100_features").default_model == "mlp"
    info = feats.info.extra["features"]
    assert info == {
        "backbone": "mobilenet_v2", "weights": {"file": bb.WEIGHTS_FILE, "sha256": bb.sha256_file(WEIGHTS)},
        "resolution": DEFAULT_RESOLUTION, "kind": "pooled", "n_tokens": 1, "dim": 1280, "augmentation": "none",
    }


def test_tokens_stream_and_a_validation_cell_that_trains():
    tokens = build(features="tokens", resolution=64)
    assert tokens.info.input_shape == (4, 1280) and tokens.test[0].x[:2].shape == (2, 4, 1280)
    assert tokens.info.extra["features"]["n_tokens"] == 4
    cfg = resolve_config("split_cifar100_features", "naive", seed=0, profile="smoke",
                         overrides={"scenario.val_fraction": 0.5, "scenario.eval_split": "val"})
    stream = build_stream(SCENARIOS.get(cfg.scenario), cfg.scenario_args, cfg.profile, 0, ROOT, False)
    assert stream.info.extra["validation"]["val_sizes"] == [10] * 10
    assert stream.test[0].x[:].shape == (10, 1280)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as run_dir:
        result = run_cell(cfg, Path(run_dir), data_root=ROOT, download=False, progress=False)
    assert len(result["matrix"]) == 10 and all(len(row) == 10 for row in result["matrix"])


@pytest.mark.parametrize("option, value, accepted", [
    ("backbone", "resnet18", "accepted: mobilenet_v2"),
    ("resolution", 100, "accepted: a multiple of 32 from 64"),
    ("features", "map", "accepted: pooled, tokens"),
])
def test_bad_options_name_the_value_and_what_is_accepted(option, value, accepted):
    with pytest.raises(ConfigError) as err:
        check_dataclass_args({option: value}, CifarFeatureOptions, "scenario")
    assert repr(value) in str(err.value) and accepted in str(err.value) and "\n" not in str(err.value)


def test_missing_cifar_data_gives_the_loader_error(tmp_path):
    shutil.copytree(ROOT / "weights", tmp_path / "weights")
    with pytest.raises(DataNotFoundError, match="CIFAR100"):
        SCENARIOS.get("split_cifar100_features").builder(CifarFeatureOptions(), "smoke", 0, tmp_path, False)
