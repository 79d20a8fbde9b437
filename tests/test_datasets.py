"""Dataset loaders: data root and download policy, MNIST IDX parsing, CIFAR-100.

Synthetic files cover parsing and error paths; tests marked `realdata` check the
shared copy found through CLBENCH_DATA (or ./data) and skip when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clbench.errors import CorruptDataError, DataNotFoundError, UnknownNameError
from clbench.scenarios import cifar100_data
from clbench.scenarios.cifar100_data import (
    OFFICIAL_FINE_TO_COARSE,
    load_cifar100,
    verify_cifar100_offline,
)
from clbench.scenarios.datasets import (
    downloads_allowed,
    load_mnist,
    read_idx,
    resolve_data_root,
)

# Computed before any test changes the environment.
REAL_ROOT = resolve_data_root(None)


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    """Every test gets its own decode cache, so none touches ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))
    return cache


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# --- data root and download policy ------------------------------------------------


def test_data_root_explicit_argument_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_data_root_env_then_cwd_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("CLBENCH_DATA")
    assert resolve_data_root(None) == tmp_path / "data"
    monkeypatch.setenv("CLBENCH_DATA", "")  # empty means unset
    assert resolve_data_root(None) == tmp_path / "data"


@pytest.mark.parametrize(
    ("env", "flag", "expected"),
    [
        ({}, None, True),
        ({"CLBENCH_OFFLINE": "1"}, None, False),
        ({"CLBENCH_OFFLINE": "0"}, None, True),
        ({"CI": "true"}, None, False),
        ({"CI": "1"}, None, False),
        ({"CI": "false"}, None, True),
        ({"CI": ""}, None, True),
        ({"CI": "true", "CLBENCH_OFFLINE": "1"}, True, True),  # explicit flag wins
        ({}, False, False),
    ],
)
def test_downloads_allowed(monkeypatch, env, flag, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("CLBENCH_OFFLINE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert downloads_allowed(flag) is expected


# --- MNIST: synthetic IDX files ----------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """An unsigned-byte IDX file, written from the format spec."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist(root: Path, split: str, n: int, *, folder="MNIST", gz=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    raw = root / folder / "raw"
    write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gz=gz)
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
    return x, y


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("variant", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_load_mnist_synthetic(tmp_path, gz, variant, folder):
    x, y = write_mnist(tmp_path, "test", 7, folder=folder, gz=gz)
    xt, yt = load_mnist(tmp_path, "test", download=False, variant=variant)
    assert xt.dtype == torch.uint8 and yt.dtype == torch.int64
    assert xt.shape == (7, 28, 28) and yt.shape == (7,)
    np.testing.assert_array_equal(xt.numpy(), x)
    np.testing.assert_array_equal(yt.numpy(), y.astype(np.int64))


def test_read_idx_shape_from_header(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a-ubyte", array)), array)


def test_truncated_idx_names_file(tmp_path):
    write_mnist(tmp_path, "train", 4)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="truncated") as info:
        load_mnist(tmp_path, "train", download=False)
    assert str(images) in str(info.value)


def test_bad_magic_and_bad_gzip(tmp_path):
    bad = tmp_path / "bad-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(CorruptDataError, match="magic"):
        read_idx(bad)
    gz = write_idx(tmp_path / "x-ubyte", np.zeros((50, 28, 28), np.uint8), gz=True)
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(CorruptDataError, match="gzip") as info:
        read_idx(gz)
    assert str(gz) in str(info.value)


def test_label_count_and_range_checked(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(CorruptDataError, match="labels for 3 images"):
        load_mnist(tmp_path, "test", download=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([0, 1, 10], np.uint8))
    with pytest.raises(CorruptDataError, match="label 10"):
        load_mnist(tmp_path, "test", download=False)


def test_missing_mnist_names_expected_paths(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(tmp_path, "train", download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert str(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte") in message
    assert "CLBENCH_DATA" in message


def test_bad_split_and_variant(tmp_path):
    with pytest.raises(UnknownNameError):
        load_mnist(tmp_path, "val", download=False)
    with pytest.raises(UnknownNameError):
        load_mnist(tmp_path, "train", download=False, variant="kmnist")


def fake_torchvision(monkeypatch, **classes):
    """Stand-in torchvision.datasets so download paths run offline (and skip the
    seconds-long real import)."""
    datasets = types.ModuleType("torchvision.datasets")
    for name, cls in classes.items():
        setattr(datasets, name, cls)
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_mnist_download_is_used_then_parsed(tmp_path, monkeypatch):
    calls = []

    def fake_mnist(root, train, download):
        calls.append((root, train, download))
        write_mnist(Path(root), "train" if train else "test", 3, gz=True)

    fake_torchvision(monkeypatch, MNIST=fake_mnist)
    x, y = load_mnist(tmp_path, "train", download=True)
    assert calls == [(str(tmp_path), True, True)] and x.shape == (3, 28, 28)


def test_mnist_download_failure_is_data_not_found(tmp_path, monkeypatch):
    def failing(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    fake_torchvision(monkeypatch, FashionMNIST=failing)
    with pytest.raises(DataNotFoundError, match="download failed .*no network") as info:
        load_mnist(tmp_path, "test", download=True, variant="fashion_mnist")
    assert "\n" not in str(info.value) and "FashionMNIST" in str(info.value)


# --- MNIST: the real shared copy -----------------------------------------------------


def real_mnist_root(folder: str) -> Path:
    raw = REAL_ROOT / folder / "raw"
    if not any((raw / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
        pytest.skip(f"{folder} not found under {raw}; set CLBENCH_DATA to the shared data folder")
    return REAL_ROOT


@pytest.mark.realdata
def test_real_mnist_matches_sources_md():
    root = real_mnist_root("MNIST")
    x, y = load_mnist(root, "train", download=False)
    xt, yt = load_mnist(root, "test", download=False)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(y.numpy(), minlength=10).tolist() == train_counts
    assert np.bincount(yt.numpy(), minlength=10).tolist() == test_counts
    assert abs(x.double().mean().item() / 255 - 0.1307) < 5e-5


@pytest.mark.realdata
def test_real_fashion_mnist_counts():
    root = real_mnist_root("FashionMNIST")
    x, y = load_mnist(root, "train", download=False, variant="fashion_mnist")
    _, yt = load_mnist(root, "test", download=False, variant="fashion_mnist")
    assert np.bincount(y.numpy()).tolist() == [6000] * 10
    assert np.bincount(yt.numpy()).tolist() == [1000] * 10
    assert abs(x.double().mean().item() / 255 - 0.2860) < 5e-5


# --- CIFAR-100: official pickle layout (synthetic) ------------------------------------


def write_cifar_pickles(root: Path, *, bytes_keys: bool, per_class: int = 2, seed: int = 0):
    """Tiny `cifar-100-python/` in the official format: rows of R, G, B planes."""
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.arange(100), per_class)
    rng.shuffle(fine)
    data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    split = {
        key("data"): data,
        key("fine_labels"): fine.tolist(),
        key("coarse_labels"): [OFFICIAL_FINE_TO_COARSE[f] for f in fine],
        key("filenames"): [key(f"img_{i}.png") for i in range(len(fine))],
    }
    meta = {
        key("fine_label_names"): [key(f"fine{i}") for i in range(100)],
        key("coarse_label_names"): [key(f"coarse{i}") for i in range(20)],
    }
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in (("train", split), ("test", split), ("meta", meta)):
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return data, fine


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_pickle_layout_nhwc(tmp_path, bytes_keys):
    data, fine = write_cifar_pickles(tmp_path, bytes_keys=bytes_keys)
    split = load_cifar100(tmp_path, "train", download=False)
    assert split.layout == "cifar-100-python" and len(split) == 200
    assert split.x.shape == (200, 32, 32, 3) and split.x.dtype == torch.uint8
    # Pixel (h, w) channel c sits at byte c*1024 + h*32 + w of the official row.
    h, w, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(split.x.numpy(), data[:, c * 1024 + h * 32 + w])
    assert split.x[5, 1, 2, 0].item() == data[5, 0 * 1024 + 1 * 32 + 2]
    assert split.x[5, 31, 0, 2].item() == data[5, 2 * 1024 + 31 * 32 + 0]
    np.testing.assert_array_equal(split.fine.numpy(), fine)
    np.testing.assert_array_equal(split.coarse.numpy(), np.array(OFFICIAL_FINE_TO_COARSE)[fine])
    assert split.fine_label_names[3] == "fine3" and split.coarse_label_names[-1] == "coarse19"


def test_cifar_pickle_missing_entry(tmp_path):
    write_cifar_pickles(tmp_path, bytes_keys=True)
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"data": b""}))
    with pytest.raises(CorruptDataError, match="test"):
        load_cifar100(tmp_path, "test", download=False)


def test_cifar_missing_names_both_layouts(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_cifar100(tmp_path, "test", download=False)
    message = str(info.value)
    assert str(tmp_path / "CIFAR100" / "meta.json") in message
    assert str(tmp_path / "cifar-100-python" / "test") in message
    assert "\n" not in message


def test_cifar_download_creates_pickle_layout(tmp_path, monkeypatch):
    def fake_cifar(root, train, download):
        write_cifar_pickles(Path(root), bytes_keys=True, per_class=1)

    fake_torchvision(monkeypatch, CIFAR100=fake_cifar)
    assert len(load_cifar100(tmp_path, "test", download=True)) == 100

    def failing(root, train, download):
        raise OSError("network unreachable")

    fake_torchvision(monkeypatch, CIFAR100=failing)
    with pytest.raises(DataNotFoundError, match="download failed"):
        load_cifar100(tmp_path / "other", "test", download=True)


# --- CIFAR-100: WebP sprite layout (synthetic) ----------------------------------------

SPRITE_GRIDS = {"train": (2, 3), "test": (1, 2)}  # (rows, cols) of 32px tiles
SPRITE_CLASSES = ["ant", "bee", "cat"]


def write_sprite_layout(root: Path, *, corrupt_sha: str | None = None, seed: int = 0):
    """A 3-class offline copy; returns each split's expected NHWC array."""
    rng = np.random.default_rng(seed)
    folder = root / "CIFAR100"
    meta = {
        "fine_label_names": SPRITE_CLASSES,
        "coarse_label_names": ["bugs", "pets"],
        "fine_to_coarse": [0, 0, 1],
        "coarse_to_fine": {"bugs": ["ant", "bee"], "pets": ["cat"]},
        "tile_size": 32,
        "splits": {},
    }
    expected = {}
    for split, (rows, cols) in SPRITE_GRIDS.items():
        (folder / split).mkdir(parents=True)
        tiles = rng.integers(
            0, 256, size=(len(SPRITE_CLASSES) * rows * cols, 32, 32, 3), dtype=np.uint8
        )
        for ci, name in enumerate(SPRITE_CLASSES):
            sprite = np.zeros((rows * 32, cols * 32, 3), np.uint8)
            for k in range(rows * cols):  # tile k at grid row k // cols, column k % cols
                r, c = k // cols, k % cols
                sprite[32 * r : 32 * r + 32, 32 * c : 32 * c + 32] = tiles[ci * rows * cols + k]
            Image.fromarray(sprite).save(folder / split / f"{name}.webp", lossless=True, exact=True)
        meta["splits"][split] = {
            "images_per_class": rows * cols,
            "grid_rows": rows,
            "grid_cols": cols,
            "num_images": len(tiles),
            "decoded_sha256": corrupt_sha or hashlib.sha256(tiles.tobytes()).hexdigest(),
            "files": {name: f"{split}/{name}.webp" for name in SPRITE_CLASSES},
        }
        expected[split] = tiles
    (folder / "meta.json").write_text(json.dumps(meta))
    return expected


def test_sprites_decode_pixel_exact_and_cache(tmp_path, tmp_cache, monkeypatch):
    expected = write_sprite_layout(tmp_path / "data")
    before = files_under(tmp_path / "data")
    for split, tiles in expected.items():
        loaded = load_cifar100(tmp_path / "data", split, download=False)
        assert loaded.layout == "webp_sprites"
        np.testing.assert_array_equal(loaded.x.numpy(), tiles)
        per_class = len(tiles) // 3
        assert loaded.fine.tolist() == [0] * per_class + [1] * per_class + [2] * per_class
        assert loaded.coarse.tolist() == [0] * (2 * per_class) + [1] * per_class
        assert loaded.fine_label_names == SPRITE_CLASSES
    assert files_under(tmp_path / "data") == before  # nothing written into the data root
    sha = hashlib.sha256(expected["train"].tobytes()).hexdigest()
    assert (tmp_cache / "cifar100" / f"train-{sha}.npy").is_file()

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar100_data, "decode_offline_split", no_decoding)
    again = load_cifar100(tmp_path / "data", "train", download=False)
    np.testing.assert_array_equal(again.x.numpy(), expected["train"])


def test_sprite_sha_mismatch_names_split_and_hashes(tmp_path, tmp_cache):
    wrong = "0" * 64
    expected = write_sprite_layout(tmp_path, corrupt_sha=wrong)
    actual = hashlib.sha256(expected["test"].tobytes()).hexdigest()
    with pytest.raises(CorruptDataError) as info:
        load_cifar100(tmp_path, "test", download=False)
    message = str(info.value)
    assert "test" in message and wrong in message and actual in message
    assert not list(tmp_cache.rglob("*.npy"))  # a bad decode is never cached


def test_sprite_wrong_size_or_missing(tmp_path):
    write_sprite_layout(tmp_path)
    bee = tmp_path / "CIFAR100" / "test" / "bee.webp"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bee, lossless=True)
    with pytest.raises(CorruptDataError, match="bee.webp"):
        load_cifar100(tmp_path, "test", download=False)
    bee.unlink()
    with pytest.raises(DataNotFoundError, match="bee.webp"):
        load_cifar100(tmp_path, "test", download=False)


def test_offline_layout_preferred_over_pickles(tmp_path):
    write_sprite_layout(tmp_path)
    write_cifar_pickles(tmp_path, bytes_keys=True)
    assert load_cifar100(tmp_path, "test", download=False).layout == "webp_sprites"


def test_verify_reports_problems_on_a_non_official_copy(tmp_path, tmp_cache):
    write_sprite_layout(tmp_path)
    report = verify_cifar100_offline(tmp_path)
    assert not report["ok"]
    assert report["splits"]["test"]["sha256_ok"] and report["coarse_to_fine_consistent"]
    assert {"fine_to_coarse_official", "train.per_class_ok", "test.per_class_ok"} <= set(
        report["problems"]
    )
    assert not tmp_cache.exists()  # verification leaves the cache alone


# --- CIFAR-100: the real offline copy --------------------------------------------------


def real_cifar_root() -> Path:
    if not (REAL_ROOT / "CIFAR100" / "meta.json").is_file():
        pytest.skip(f"CIFAR100/meta.json not found under {REAL_ROOT}; set CLBENCH_DATA")
    return REAL_ROOT


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cifar_verifies_against_meta():
    report = verify_cifar100_offline(real_cifar_root())
    assert report["ok"], report["problems"]
    assert report["splits"]["train"]["num_images"] == 50000
    assert report["splits"]["test"]["num_images"] == 10000


# First official train images (README "Checks"): class, file, first three bytes
# of the official channel-first row (R plane), last three (B plane), fine/coarse.
OFFICIAL_FIRST_IMAGES = [
    ("cattle", "bos_taurus_s_000507.png", (255, 255, 255), (10, 59, 79), 11),
    ("dinosaur", "stegosaurus_s_000125.png", (255, 253, 253), (253, 253, 255), 15),
    ("apple", "mcintosh_s_000643.png", (250, 248, 247), (194, 207, 228), 4),
    ("boy", "altar_boy_s_001435.png", (124, 131, 135), (232, 236, 231), 14),
    ("aquarium_fish", "cichlid_s_000031.png", (43, 32, 87), (60, 29, 37), 1),
]


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cifar_train_loads_with_known_pixels():
    root = real_cifar_root()
    split = load_cifar100(root, "train", download=False)
    assert split.x.shape == (50000, 32, 32, 3)
    assert np.bincount(split.fine.numpy()).tolist() == [500] * 100
    assert np.bincount(split.coarse.numpy()).tolist() == [2500] * 20
    names = json.loads((root / "CIFAR100" / "filenames.json").read_text())["train"]
    for cls, filename, head, tail, coarse in OFFICIAL_FIRST_IMAGES:
        fine = split.fine_label_names.index(cls)
        index = fine * 500 + names[cls].index(filename)
        row = split.x[index].permute(2, 0, 1).reshape(-1)  # official CHW row
        assert tuple(row[:3].tolist()) == head and tuple(row[-3:].tolist()) == tail, filename
        assert split.fine[index].item() == fine and split.coarse[index].item() == coarse
    cached = load_cifar100(root, "train", download=False)
    assert bool((cached.x == split.x).all())
