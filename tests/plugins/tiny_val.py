"""A tiny stream with a validation split, and a strategy that fails on demand (tests of `clbench tune`).

- scenario `tiny_blobs_val`: tests/plugins/tiny_cells.py's blobs plus the keys the
  validation-split work adds to every scenario (`val_fraction`, `eval_split`): the
  last `val_fraction` of each training experience is held out, and `eval_split = "val"`
  measures the accuracy matrix on it instead of on the test experiences.
- strategy `fragile`: Naive whose training raises when its parameter `fail` is true,
  so a search over `strategy.fail` has trials that fail and trials that complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from avalanche.training import Naive

from clbench import register_scenario, register_strategy
from clbench.registry import SCENARIOS, load_plugin_file
from clbench.scenarios.stream import ExperienceTensors, TensorStream

# Plugin files are not packages, so no import: list tiny_cells.py before this file in
# plugin_files (Ray ships each listed file alone), or it is loaded from next to this one.
if "tiny_blobs" not in SCENARIOS.names():
    load_plugin_file(Path(__file__).with_name("tiny_cells.py"))
_BLOBS = SCENARIOS.get("tiny_blobs")
BlobOptions = _BLOBS.options


@dataclass
class ValBlobOptions(BlobOptions):
    val_fraction: float = 0.0
    eval_split: str = "test"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.val_fraction <= 0.5 or self.eval_split not in ("test", "val"):
            raise ValueError("val_fraction must be in [0, 0.5] and eval_split 'test' or 'val'")
        if self.eval_split == "val" and not self.val_fraction:
            raise ValueError("eval_split = 'val' needs val_fraction > 0")


@register_scenario(
    "tiny_blobs_val", description="tiny_blobs with a validation split (tests)", scenario_type="class_il",
    options=ValBlobOptions, profiles=_BLOBS.profiles,
)
def build_tiny_blobs_val(opts: ValBlobOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    base = BlobOptions(opts.n_experiences, opts.train_per_exp, opts.test_per_exp, opts.dim)
    stream = _BLOBS.builder(base, profile, seed, data_root, download)
    if not opts.val_fraction:
        return stream
    train, val = [], []
    for exp in stream.train:
        n_val = max(1, int(len(exp) * opts.val_fraction))
        train.append(ExperienceTensors(exp.x[:-n_val], exp.y[:-n_val], exp.task))
        val.append(ExperienceTensors(exp.x[-n_val:], exp.y[-n_val:], exp.task))
    return TensorStream(stream.info, train, val if opts.eval_split == "val" else stream.test)


@dataclass
class FragileParams:
    fail: bool = False


@register_strategy("fragile", description="Naive that raises when fail = true (tests)", params=FragileParams)
def build_fragile(ctx):
    from avalanche.core import SupervisedPlugin

    class Fail(SupervisedPlugin):
        def before_training(self, strategy, **kwargs):
            raise RuntimeError("deliberate failure (fragile, fail = true)")

    plugins = [Fail()] if ctx.params.fail else []
    return Naive(criterion=torch.nn.CrossEntropyLoss(), **ctx.template_kwargs(plugins=plugins))
