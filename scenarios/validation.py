"""Validation streams: hold out part of every training experience of a built stream.

Applied once to any built `TensorStream` (image streams stay lazy: held-out rows
are index maps too), so no scenario builder knows about it. The options
(`stream_seed`, `val_fraction`, `eval_split`) are described and checked in
`clbench.stream_protocol` (kept out of the scenarios package so config checks do not import torch).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from clbench.scenarios.lazy import select_rows
from clbench.scenarios.stream import ExperienceTensors, TensorStream
from clbench.stream_protocol import PROTOCOL_DEFAULTS, native_keys

# Held-out rows come from their own random stream, so adding a validation split
# never changes the draws (permutations, subsamples) the builder makes.
_VAL_SALT = 0x7A11D


def build_stream(spec, scenario_args: dict[str, Any], profile: str, seed: int, data_root, download: bool) -> TensorStream:
    """Build scenario `spec` from a resolved config's `scenario_args` and cell `seed`:
    the builder draws the stream from the stream seed, then the validation split is applied."""
    args = dict(scenario_args)
    protocol = {k: args.pop(k) for k in list(args) if k in PROTOCOL_DEFAULTS and k not in native_keys(spec.options)}
    stream_seed = protocol.get("stream_seed")
    stream_seed = seed if stream_seed is None else stream_seed
    stream = spec.builder(spec.options(**args), profile, stream_seed, data_root, download)
    stream.info.extra["stream_seed"] = stream_seed
    return with_validation(
        stream, protocol.get("val_fraction", 0.0), protocol.get("eval_split", "test"), stream_seed
    )


def stratified_holdout(y: torch.Tensor, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of round(fraction * n_c) random samples of every class c.

    A target that is not one label per sample (language modelling) has no classes:
    the whole experience is then one stratum."""
    labels = y.numpy() if y.dim() == 1 else np.zeros(len(y), dtype=np.int64)
    held = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        held.append(rng.choice(rows, size=int(round(fraction * len(rows))), replace=False))
    return np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)


def with_validation(stream: TensorStream, fraction: float, eval_split: str, stream_seed: int) -> TensorStream:
    """`stream` with `fraction` of every training experience held out (stratified by class).

    The held-out rows leave the training experience. With eval_split "val" they
    become the experiences the accuracy matrix is measured on; otherwise the test
    experiences stay. fraction 0 returns `stream` itself, untouched."""
    if not fraction:
        return stream
    train, val, sizes = [], [], []
    digest = hashlib.sha256()
    for e, exp in enumerate(stream.train):
        rng = np.random.default_rng([stream_seed, e, _VAL_SALT])
        held = stratified_holdout(exp.y, fraction, rng)
        keep = np.setdiff1d(np.arange(len(exp)), held, assume_unique=True)
        digest.update(held.astype("<i8").tobytes())
        train.append(_rows(exp, keep))
        val.append(_rows(exp, held))
        sizes.append(len(held))
    stream.info.extra["validation"] = {
        "fraction": fraction, "eval_split": eval_split, "val_sizes": sizes,
        "heldout_sha256": digest.hexdigest()[:16],  # indices within each experience's training set
    }
    return TensorStream(stream.info, train, val if eval_split == "val" else stream.test)


def _rows(exp: ExperienceTensors, rows: np.ndarray) -> ExperienceTensors:
    idx = torch.from_numpy(rows)
    return ExperienceTensors(select_rows(exp.x, idx), exp.y[idx], exp.task)
