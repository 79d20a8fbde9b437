"""Shared fixtures.

Tests run on the real shared MNIST when CLBENCH_DATA points at it (CI does),
and otherwise on a small synthetic copy in torchvision's raw layout, so no
test needs to be skipped for lack of data. Downloads are always off in tests.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as an IDX file: magic 0x0803 (images) or 0x0801 (labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_synthetic_mnist(root: Path, folder: str, n_train: int = 1200, n_test: int = 400, seed: int = 0) -> None:
    """Learnable fake digits: each class is a fixed random template plus noise."""
    rng = np.random.RandomState(seed)
    templates = rng.randint(0, 256, size=(10, 28, 28))
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = np.clip(templates[y] * 0.7 + rng.randint(0, 80, size=(n, 28, 28)), 0, 255)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", x)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", y)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    shared = os.environ.get("CLBENCH_DATA")
    if shared and (Path(shared) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        return Path(shared).resolve()  # absolute: CI sets a relative path, and some tests chdir
    root = tmp_path_factory.mktemp("synthetic_data")
    write_synthetic_mnist(root, "MNIST")
    write_synthetic_mnist(root, "FashionMNIST", seed=1)
    return root


@pytest.fixture(autouse=True)
def _offline_and_private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLBENCH_OFFLINE", "1")
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "clbench_cache"))
    # Tests write made-up data under the official file names; the checksum check
    # (scenarios/integrity.py) is tested on its own in tests/test_reliability.py.
    monkeypatch.setenv("CLBENCH_VERIFY_DATA", "0")



@pytest.fixture
def one_torch_thread():
    """Tiny models: with two intra-op threads on a shared 2-core machine, thread hand-offs
    cost far more than the maths (a 38k-parameter backward took 0.6 s instead of 1 ms)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
