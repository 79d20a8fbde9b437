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
The fast path returns exactly the per-sample items Avalanche would, so collation,
samplers and every strategy's loader behave as before; anything else falls
back to the per-sample path. `tests/test_fastdata.py` checks both paths give
identical items and identical training runs.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from avalanche.benchmarks.utils import data_loader as avalanche_data_loader
from avalanche.benchmarks.utils.data import AvalancheDataset, _FlatDataWithTransform
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


def _int_attribute_values(da) -> np.ndarray | None:
    """The attribute as an int array, or None for non-integer attributes (e.g. DER's logits)."""

    def build():
        values = list(da.data)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            return None
        return np.asarray(values, dtype=np.int64)

    return _cached_array(da, "int_values", build)


def avalanche_getitems(self: AvalancheDataset, indices):
    """`__getitems__` for AvalancheDataset: one gather per leaf instead of one call per sample."""
    attrs = [da for da in self._data_attributes.values() if da.use_in_getitem]
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    attr_values = [_int_attribute_values(da) for da in attrs]
    if n == 0 or idx.min() < 0 or idx.max() >= len(self) or any(v is None or len(v) != len(self) for v in attr_values):
        return _fallback(self, idx)
    leaves: list = []
    leaf_ids = np.empty(n, dtype=np.int64)
    local = np.empty(n, dtype=np.int64)
    if not _locate(self._flat_data, idx, leaves, leaf_ids, local, np.arange(n)):
        return _fallback(self, idx)
    stats["fast"] += 1
    if len(leaves) == 1:
        sel = torch.from_numpy(local)
        xs, ys = leaves[0].x[sel], leaves[0].y[sel]
    else:
        xs = torch.empty((n, *leaves[0].x.shape[1:]), dtype=leaves[0].x.dtype)
        ys = torch.empty(n, dtype=torch.long)
        for leaf_id, leaf in enumerate(leaves):
            mask = torch.from_numpy(leaf_ids == leaf_id)
            sel = torch.from_numpy(local[leaf_ids == leaf_id])
            xs[mask], ys[mask] = leaf.x[sel], leaf.y[sel]
    columns = [list(xs.unbind(0)), ys.tolist()] + [values[idx].tolist() for values in attr_values]
    # Avalanche turns the leaf's tuple into a list when it appends attributes.
    as_item = list if attrs else tuple
    return [as_item(item) for item in zip(*columns, strict=True)]


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


def enable() -> None:
    if os.environ.get("CLBENCH_FAST_DATA", "1") == "0":
        return
    AvalancheDataset.__getitems__ = avalanche_getitems
    avalanche_data_loader.ConcatDataset = BatchedConcatDataset


def disable() -> None:
    if "__getitems__" in AvalancheDataset.__dict__:
        del AvalancheDataset.__getitems__
    avalanche_data_loader.ConcatDataset = ConcatDataset


def is_enabled() -> bool:
    return "__getitems__" in AvalancheDataset.__dict__


@contextlib.contextmanager
def fast_fetch(enabled: bool = True):
    """Run a block with the fast path on (or off), restoring the previous state."""
    previous = is_enabled()
    enable() if enabled else disable()
    try:
        yield
    finally:
        enable() if previous else disable()
