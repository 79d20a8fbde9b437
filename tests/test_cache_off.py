"""CLBENCH_CACHE=off means no disk cache anywhere: nothing is written, not even a folder
named "off" in the working directory (which every cache used to create)."""

from __future__ import annotations

import torch

from clbench.cache_dir import cache_root
from clbench.scenarios import cifar100_data, integrity, lazy


def test_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", "off")
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "source.bin"
    source.write_bytes(b"0123456789")
    built = []

    def build():
        built.append(1)
        return [torch.arange(4), torch.ones(2)]

    first = lazy.shared_arrays("probe", [source], build)
    second = lazy.shared_arrays("probe", [source], build)
    assert [t.tolist() for t in first] == [[0, 1, 2, 3], [1.0, 1.0]] and len(second) == 2
    assert built == [1, 1]  # no shared copy: each call builds its own
    assert cache_root() is None and cifar100_data.resolve_cache_dir() is None
    assert cifar100_data._cache_path("train", "abc") is None
    assert integrity._stamp(source, "sha256", ("x",))[0] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.bin"]


def test_a_folder_is_used_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "source.bin"
    source.write_bytes(b"0123456789")
    lazy.shared_arrays("probe", [source], lambda: [torch.arange(3), torch.zeros(1)])
    assert len(list((tmp_path / "cache" / "bases").glob("probe-*.npy"))) == 2
    assert cifar100_data._cache_path("train", "abc") == tmp_path / "cache" / "cifar100" / "train-abc.npy"
