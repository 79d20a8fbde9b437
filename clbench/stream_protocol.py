"""The stream protocol options every scenario takes: stream seed and validation split.

Three scenario options exist for every scenario without being part of any
scenario's options dataclass (they are applied to the built stream, so no
builder knows about them):

- `stream_seed` (int, default: the cell seed): the seed that draws the stream
  itself (permutations, angles, class order, subsamples, held-out rows). The
  cell seed still seeds model initialisation and training, so a tuning study
  can vary the training seed on one fixed stream.
- `val_fraction` (0 = off, or a float in (0, 0.5]): hold out that fraction of
  each class of each training experience, drawn from the stream seed.
- `eval_split` ("test" | "val"): what the accuracy matrix is measured on. "val"
  is the held-out part of each experience's training data, or, for a scenario
  with an official validation split (CLINC150, whose options define
  `eval_split` themselves), that official split.

Only values that differ from the defaults are kept in the resolved config, so
configs (and config hashes) of runs that do not use them are unchanged, and
with `val_fraction = 0` the stream is not touched at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clbench.errors import ConfigError

PROTOCOL_DEFAULTS: dict[str, Any] = {"stream_seed": None, "val_fraction": 0.0, "eval_split": "test"}
EVAL_SPLITS = ("test", "val")
MAX_VAL_FRACTION = 0.5


def native_keys(options_cls: type) -> set[str]:
    """Protocol keys a scenario's own options define (CLINC150's official `eval_split`)."""
    return {f.name for f in dataclasses.fields(options_cls)} & set(PROTOCOL_DEFAULTS)


def check_protocol(args: dict[str, Any], options_cls: type, scenario: str) -> dict[str, Any]:
    """Take the generic protocol keys out of `args` (in place), validate them and return the
    ones that differ from the defaults; the rest of `args` goes to the options dataclass."""
    generic = set(PROTOCOL_DEFAULTS) - native_keys(options_cls)
    given = {k: args.pop(k) for k in list(args) if k in generic}
    out: dict[str, Any] = {}
    seed = given.get("stream_seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ConfigError(f"bad scenario.stream_seed {seed!r}; accepted: an integer from 0 to 2**32 - 1")
        out["stream_seed"] = seed
    fraction = given.get("val_fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
        fraction == 0 or 0 < fraction <= MAX_VAL_FRACTION
    ):
        raise ConfigError(f"bad scenario.val_fraction {fraction!r}; accepted: 0 (off) or a number in (0, {MAX_VAL_FRACTION}]")
    if fraction:
        out["val_fraction"] = float(fraction)
    split = given.get("eval_split", "test")
    if split not in EVAL_SPLITS:
        raise ConfigError(f"bad scenario.eval_split {split!r}; accepted: {', '.join(EVAL_SPLITS)}")
    if split == "val":
        if not fraction:
            raise ConfigError(
                f"scenario.eval_split 'val' on {scenario!r} needs scenario.val_fraction in (0, {MAX_VAL_FRACTION}] "
                "(it has no official validation split)"
            )
        out["eval_split"] = split
    return out
