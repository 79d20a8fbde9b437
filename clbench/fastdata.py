"""A batched fetch path for Avalanche datasets built on in-memory tensors.

Avalanche fetches every sample through several Python layers (flat-data index
lookup, transform groups, data attributes): about 40 us per sample, which is
more than the MLP's own forward and backward on MNIST. PyTorch's DataLoader
asks a dataset for a whole minibatch at once when it defines `__getitems__`;
this module gives `AvalancheDataset` one.

The fast path only applies when the dataset tree bottoms out in
`TensorLeaf`s and no transform is set anywhere in it (our tensorized streams,
and every subset, concatenation or replay buffer Avalanche derives from them).
Avalanche's own loaders wrap datasets in torch's ConcatDataset, so that class
gets a batched twin too (swapped in Avalanche's loader module only).

Two fixed costs go the same way. Building a benchmark and every loader walk
the label attributes (`targets`, `targets_task_labels`) element by element
through FlatData's `__getitem__`: about 1 s for Permuted MNIST, so plain
integer attributes iterate from one cached array instead. And every training
loader asks `has_ffcv_support`, which traverses the whole dataset tree (0.2 s a
call); without the `ffcv` package no dataset can have FFCV support, so the
answer is False at once.
The fast path returns exactly the per-sample items Avalanche would, so collation,
samplers and every strategy's loader behave as before; anything else falls
back to the per-sample path. `tests/test_fastdata.py` checks both paths give
identical items and identical training runs.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import importlib.util
import os

import numpy as np
import torch
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils import data_loader as avalanche_data_loader
from avalanche.benchmarks.utils.data import AvalancheDataset, _FlatDataWithTransform
from avalanche.benchmarks.utils.ffcv_support import ffcv_components
from avalanche.benchmarks.utils.flat_data import ConstantSequence, FlatData
from avalanche.benchmarks.utils.transforms import TupleTransform
from torch.utils.data import ConcatDataset

from clbench.scenarios.stream import TensorLeaf

# How many minibatches took each path (tests use this to prove the fast path ran).
stats = {"fast": 0, "fallback": 0}


def _fallback(dataset, idx):
    stats["fallback"] += 1
    return [dataset[int(i)] for i in idx]


def _is_identity(transform) -> bool:
    # Avalanche stores "no transform" either as None or as a TupleTransform of Nones.
    if transform is None:
        return True
    return isinstance(transform, TupleTransform) and all(t is None for t in transform.transforms)


def _no_transforms(node: _FlatDataWithTransform) -> bool:
    for groups in (node._transform_groups, node._frozen_transform_groups):
        if groups is not None and not all(_is_identity(t) for t in groups.transform_groups.values()):
            return False
    return True


def _cached_array(node, attr: str, build):
    """Per-node cache; Avalanche datasets are immutable once built."""
    cache = node.__dict__.setdefault("_clbench_cache", {})
    if attr not in cache:
        cache[attr] = build()
    return cache[attr]


def _locate(node, idx: np.ndarray, leaf_out: list, id_out: np.ndarray, local_out: np.ndarray, pos: np.ndarray) -> bool:
    """Resolve indices `idx` of `node` to (leaf, local index) pairs, written at `pos`.

    Returns False when some part of the tree is not a transform-free tensor tree.
    """
    if isinstance(node, TensorLeaf):
        try:
            leaf_id = next(i for i, leaf in enumerate(leaf_out) if leaf is node)
        except StopIteration:
            leaf_out.append(node)
            leaf_id = len(leaf_out) - 1
        id_out[pos] = leaf_id
        local_out[pos] = idx
        return True
    if not isinstance(node, _FlatDataWithTransform) or not _no_transforms(node):
        return False
    if node._indices is not None:
        indices = _cached_array(node, "indices", lambda: np.asarray(node._indices, dtype=np.int64))
        idx = indices[idx]
    ends = _cached_array(node, "ends", lambda: np.asarray(node._cumulative_sizes, dtype=np.int64))
    starts = _cached_array(node, "starts", lambda: np.concatenate([[0], ends[:-1]]))
    which = np.searchsorted(ends, idx, side="right")
    for d in np.unique(which):
        mask = which == d
        if not _locate(node._datasets[d], idx[mask] - starts[d], leaf_out, id_out, local_out, pos[mask]):
            return False
    return True


def int_values(seq) -> np.ndarray | None:
    """Every value of a label sequence as one int64 array; None unless all are plain ints.

    Handles what Avalanche builds label attributes from: Python lists of ints,
    `ConstantSequence`s and (exactly) `FlatData` trees of them, with their
    concatenations and index lists. Anything else (tensors, numpy scalars,
    DER's logits, datasets) is None, so callers fall back to Avalanche's path,
    which yields the stored objects themselves.
    """
    if isinstance(seq, DataAttribute):
        seq = seq.data
    if type(seq) is ConstantSequence:
        value = seq._constant_value
        return np.full(len(seq), value, dtype=np.int64) if type(value) is int else None
    if type(seq) is list:
        return np.asarray(seq, dtype=np.int64) if all(type(v) is int for v in seq) else None
    if type(seq) is not FlatData:
        return None

    def build():
        parts = [int_values(d) for d in seq._datasets]
        if any(p is None for p in parts):
            return None
        values = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return values if seq._indices is None else values[np.asarray(seq._indices, dtype=np.int64)]

    return _cached_array(seq, "int_values", build)


def _gather(dataset: AvalancheDataset, indices) -> list | None:
    """The columns of samples `indices` as whole tensors: [x, y, *getitem attributes].

    None when the fast path does not apply (a transform, a non-tensor leaf, a
    non-integer attribute, an index out of range): callers then go Avalanche's way.
    """
    attrs = [da for da in dataset._data_attributes.values() if da.use_in_getitem]
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    attr_values = [int_values(da) for da in attrs]  # cached on each attribute's FlatData
    if n == 0 or idx.min() < 0 or idx.max() >= len(dataset) or any(v is None or len(v) != len(dataset) for v in attr_values):
        return None
    leaves: list = []
    leaf_ids = np.empty(n, dtype=np.int64)
    local = np.empty(n, dtype=np.int64)
    if not _locate(dataset._flat_data, idx, leaves, leaf_ids, local, np.arange(n)):
        return None
    if len(leaves) == 1:
        sel = torch.from_numpy(local)
        xs, ys = leaves[0].x[sel], leaves[0].y[sel]
    else:
        xs = torch.empty((n, *leaves[0].x.shape[1:]), dtype=leaves[0].x.dtype)
        ys = torch.empty((n, *leaves[0].y.shape[1:]), dtype=leaves[0].y.dtype)  # [N] labels or [N, L] targets
        for leaf_id, leaf in enumerate(leaves):
            mask = torch.from_numpy(leaf_ids == leaf_id)
            sel = torch.from_numpy(local[leaf_ids == leaf_id])
            xs[mask], ys[mask] = leaf.x[sel], leaf.y[sel]
    return [xs, ys] + [torch.from_numpy(values[idx]) for values in attr_values]


def avalanche_getitems(self: AvalancheDataset, indices):
    """`__getitems__` for AvalancheDataset: one gather per leaf instead of one call per sample."""
    columns = _gather(self, indices)
    if columns is None:
        return _fallback(self, np.asarray(indices, dtype=np.int64))
    stats["fast"] += 1
    xs, ys, *attrs = columns
    # Labels as ints, as the leaf returns them; LM target sequences stay tensors.
    rows = [list(xs.unbind(0)), ys.tolist() if ys.dim() == 1 else list(ys.unbind(0))] + [a.tolist() for a in attrs]
    # Avalanche turns the leaf's tuple into a list when it appends attributes.
    as_item = list if attrs else tuple
    return [as_item(item) for item in zip(*rows, strict=True)]


def sequential_batches(dataset: AvalancheDataset, batch_size: int):
    """The collated minibatches of `DataLoader(dataset, batch_size)` (in order, no shuffle).

    With the fast path on and applicable, each minibatch is one gather: same
    samples, same order, same values as the loader gives, without its per-batch
    overhead, and (for lazy streams, which decode what is gathered) without ever
    holding the whole experience decoded. Otherwise it is that DataLoader. Used by
    full passes over an experience, such as EWC's Fisher estimate.
    """
    n = len(dataset)
    columns = _gather(dataset, np.arange(min(batch_size, n))) if is_enabled() else None
    if columns is None:
        collate = getattr(dataset, "collate_fn", None)
        yield from torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
        return
    stats["fast"] += 1
    # A DataLoader iterator draws its workers' base seed from the global RNG even with
    # no workers and no shuffle; draw it too, or every later shuffle would differ.
    torch.empty((), dtype=torch.int64).random_()
    yield columns
    for start in range(batch_size, n, batch_size):
        # The same tree as the first batch, so the fast path applies again.
        yield _gather(dataset, np.arange(start, min(start + batch_size, n)))


class BatchedConcatDataset(ConcatDataset):
    """torch's ConcatDataset plus `__getitems__`, forwarding each part's indices in one call.

    Avalanche's task-balanced and replay loaders wrap their datasets in a
    ConcatDataset, which would otherwise fetch sample by sample again.
    """

    def __getitems__(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        ends = _cached_array(self, "ends", lambda: np.asarray(self.cumulative_sizes, dtype=np.int64))
        which = np.searchsorted(ends, idx, side="right")
        out: list = [None] * len(idx)
        for d in np.unique(which):
            pos = np.nonzero(which == d)[0]
            local = (idx[pos] - (ends[d - 1] if d > 0 else 0)).tolist()
            part = self.datasets[d]
            items = part.__getitems__(local) if hasattr(part, "__getitems__") else [part[i] for i in local]
            for p, item in zip(pos, items, strict=True):
                out[p] = item
        return out


def _sequence_iter(self):
    """`__iter__` for DataAttribute and FlatData: from the cached int array when there is one."""
    values = int_values(self)
    return iter(values.tolist()) if values is not None else collections.abc.Sequence.__iter__(self)


@functools.cache
def _ffcv_installed() -> bool:
    return importlib.util.find_spec("ffcv") is not None


def has_ffcv_support(datasets) -> bool:
    # `enable_ffcv` needs the ffcv package, so without it no dataset can have been prepared.
    return _ffcv_installed() and ffcv_components.has_ffcv_support(datasets)


_PATCHES = [  # (owner, attribute, fast version); the originals are kept for `disable`
    (AvalancheDataset, "__getitems__", avalanche_getitems),
    (avalanche_data_loader, "ConcatDataset", BatchedConcatDataset),
    (avalanche_data_loader, "has_ffcv_support", has_ffcv_support),
    (DataAttribute, "__iter__", _sequence_iter),
    (FlatData, "__iter__", _sequence_iter),
]
_ORIGINALS = {(id(owner), name): owner.__dict__.get(name) for owner, name, _ in _PATCHES}


def enable() -> None:
    if os.environ.get("CLBENCH_FAST_DATA", "1") == "0":
        return
    for owner, name, fast in _PATCHES:
        setattr(owner, name, fast)


def disable() -> None:
    for owner, name, _ in _PATCHES:
        original = _ORIGINALS[(id(owner), name)]
        if original is None:
            if name in owner.__dict__:
                delattr(owner, name)
        else:
            setattr(owner, name, original)


def is_enabled() -> bool:
    return AvalancheDataset.__dict__.get("__getitems__") is avalanche_getitems


@contextlib.contextmanager
def fast_fetch(enabled: bool = True):
    """Run a block with the fast path on (or off), restoring the previous state."""
    previous = is_enabled()
    enable() if enabled else disable()
    try:
        yield
    finally:
        enable() if previous else disable()
