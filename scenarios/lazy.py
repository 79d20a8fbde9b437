"""Lazy experience inputs: rows of one shared base tensor, decoded per minibatch.

Materialising every permuted, rotated or class-split copy of a dataset costs
memory that grows with the number of experiences (a 10 x 60k Permuted MNIST
cell held ten float32 copies of 60k x 784 values, 188 MB each). A `LazyRows` instead holds an index
map into ONE raw base tensor (uint8 images, loaded once per stream) and a
decode function (normalisation, then the experience's permutation or
rotation) applied to whatever rows are asked for: one sample in the per-item
`__getitem__`, a minibatch in `clbench.fastdata`'s batched path, a slice in the
runner's batched evaluation. Peak memory is then the base plus one batch.

The raw base itself is shared by every process on the machine (`shared_arrays`):
decoded once into `$CLBENCH_CACHE/bases/` and memory-mapped read-only, so
parallel workers map the same page-cache pages instead of each loading a copy.

The decode ops are elementwise (normalisation) or per-sample (pixel gather,
rotation), so decoding any subset gives bitwise the values the materialised
stream held for those rows; `tests/test_lazy_streams.py` checks whole accuracy
matrices against materialised references.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

Decode = Callable[[torch.Tensor], torch.Tensor]


class LazyRows:
    """`decode(base[index[key]])` for any key a tensor accepts along dim 0.

    Quacks like the float tensor it stands for where the code base touches
    experience inputs: `len`, `shape`, `dtype`, integer, slice and index-tensor
    indexing (each returns a real tensor). `subset` composes index maps without
    decoding anything.
    """

    def __init__(self, base: torch.Tensor, index: torch.Tensor, decode: Decode):
        self.base, self.decode = base, decode
        self.index = torch.as_tensor(index, dtype=torch.long)
        probe = decode(base[:1])  # one row tells the decoded sample shape and dtype
        self._sample_shape, self.dtype = tuple(probe.shape[1:]), probe.dtype

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self._sample_shape))

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self.decode(self.base[self.index[int(key)].view(1)])[0]
        if isinstance(key, np.ndarray):
            key = torch.from_numpy(key)
        return self.decode(self.base[self.index[key]])

    def subset(self, rows) -> LazyRows:
        """The rows `rows` (indices or a boolean mask) of this view, still lazy."""
        return LazyRows(self.base, self.index[torch.as_tensor(rows)], self.decode)

    def then(self, transform: Decode) -> LazyRows:
        """The same rows, with `transform` applied after the current decode."""
        decode = self.decode
        return LazyRows(self.base, self.index, lambda raw: transform(decode(raw)))

    def materialize(self) -> torch.Tensor:
        return self[:]


def select_rows(x, rows):
    """Rows of an experience input, lazy or not (a tensor is indexed, and so copied)."""
    if isinstance(x, LazyRows):
        return x.subset(rows)
    return x[torch.as_tensor(rows)]


def materialize(x) -> torch.Tensor:
    """The input as one real tensor (tests and references; training never needs it)."""
    return x.materialize() if isinstance(x, LazyRows) else x


def shared_arrays(
    name: str, sources: Sequence[Path], build: Callable[[], Sequence[torch.Tensor]], count: int = 2,
) -> list[torch.Tensor]:
    """The `count` tensors `build()` returns, from one memory-mapped copy per machine.

    The copy lives in `$CLBENCH_CACHE/bases/`, keyed by the source files' paths,
    sizes and modification times: a changed file misses the cache and goes through
    `build` (and so through the loader's own checks) again. Where the cache cannot
    be written, the tensors stay private to this process.
    """
    from clbench.scenarios.cifar100_data import resolve_cache_dir

    root = resolve_cache_dir()
    if root is None:  # CLBENCH_CACHE=off: private to this process
        return list(build())
    key = hashlib.sha256(repr([(str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns)
                               for p in sources]).encode()).hexdigest()[:16]
    folder = root / "bases"
    paths = [folder / f"{name}-{key}-{i}.npy" for i in range(count)]
    if not all(p.is_file() for p in paths):
        tensors = build()
        assert len(tensors) == len(paths)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for path, t in zip(paths, tensors, strict=True):
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                with open(tmp, "wb") as f:  # a file object, so np.save adds no second suffix
                    np.save(f, t.numpy())
                os.replace(tmp, path)  # atomic: a concurrent reader sees no half-written file
        except OSError:
            return list(tensors)
        del tensors  # the private copy goes; this process maps the shared one like the others
    # Copy-on-write mapping: pages stay shared while read (all a base ever is), and a
    # stray in-place write would stay private instead of crashing on a read-only page.
    return [torch.from_numpy(np.load(p, mmap_mode="c")) for p in paths]
