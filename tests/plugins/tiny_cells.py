"""Tiny cells for engine and reliability tests (loaded with --plugin / plugin_files).

- scenario `tiny_blobs`: seeded Gaussian blobs in 8-D, 4 classes in 2 class-IL
  experiences; no data files, so a cell takes a fraction of a second.
- strategy `probe`: Naive that appends its cell id to `<marker_dir>/starts.log`
  when training starts (to count how often a cell ran) and can pause there,
  or wait for a gate file (to hold cells in flight until a test says go).
- strategy `raises`: Naive whose training raises a RuntimeError.
- strategy `dies`: Naive that SIGKILLs its own process for its first `die_times`
  attempts (counted in `marker_dir`), like a worker lost to the OOM killer.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive

from clbench import register_scenario, register_strategy
from clbench.scenarios.stream import ExperienceTensors, ScenarioInfo, TensorStream
from clbench.store import cell_id


@dataclass
class BlobOptions:
    n_experiences: int = 2
    train_per_exp: int = 64
    test_per_exp: int = 32
    dim: int = 8

    def __post_init__(self):
        if min(self.n_experiences, self.train_per_exp, self.test_per_exp, self.dim) < 1:
            raise ValueError("every tiny_blobs option must be >= 1")


_TRAIN = {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "train_mb_size": 16}
_PROFILE = {"scenario": {}, "train": _TRAIN}


@register_scenario(
    "tiny_blobs", description="Seeded Gaussian blobs, 2 classes per experience (tests and load benchmarks)",
    scenario_type="class_il", options=BlobOptions, profiles={"smoke": _PROFILE, "quick": _PROFILE, "full": _PROFILE},
)
def build_tiny_blobs(opts: BlobOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    rng = np.random.RandomState(seed)
    n_classes = 2 * opts.n_experiences
    centers = rng.normal(0.0, 2.0, size=(n_classes, opts.dim))

    def draw(classes, n):
        y = np.asarray(classes)[np.arange(n) % len(classes)]
        x = centers[y] + rng.normal(size=(n, opts.dim))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)

    train, test, per_exp = [], [], []
    for e in range(opts.n_experiences):
        classes = [2 * e, 2 * e + 1]
        per_exp.append(classes)
        train.append(ExperienceTensors(*draw(classes, opts.train_per_exp), 0))
        test.append(ExperienceTensors(*draw(classes, opts.test_per_exp), 0))
    info = ScenarioInfo("tiny_blobs", "class_il", opts.n_experiences, n_classes, (opts.dim,), per_exp)
    return TensorStream(info, train, test)


@dataclass
class ProbeParams:
    marker_dir: str = ""  # where starts.log and attempt counters go ("" = nowhere)
    pause: float = 0.0  # seconds to wait when training starts
    die_times: int = 0  # `dies`: SIGKILL own process on this many first attempts
    gate: str = ""  # wait (at most 10 minutes) until this file exists before training


def _cell_of(ctx) -> str:
    cfg = ctx.config
    return cell_id(cfg.scenario, cfg.label, cfg.seed, cfg.config_hash())


class _Probe(SupervisedPlugin):
    def __init__(self, cid: str, params: ProbeParams, action=None):
        super().__init__()
        self.cid, self.params, self.action = cid, params, action

    def before_training(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter:
            return  # once per cell, at its first experience
        if self.params.marker_dir:
            with open(Path(self.params.marker_dir) / "starts.log", "a") as log:
                log.write(f"{self.cid} {os.getpid()}\n")
        time.sleep(self.params.pause)
        deadline = time.monotonic() + 600
        while self.params.gate and not Path(self.params.gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.action:
            self.action()


def _naive(ctx, plugin):
    return Naive(criterion=torch.nn.CrossEntropyLoss(), **ctx.template_kwargs(plugins=[plugin]))


@register_strategy("probe", description="Naive that logs its start and may pause (tests)", params=ProbeParams)
def build_probe(ctx):
    return _naive(ctx, _Probe(_cell_of(ctx), ctx.params))


@register_strategy("raises", description="Naive whose training raises (tests)", params=ProbeParams)
def build_raises(ctx):
    def fail():
        raise RuntimeError("deliberate failure inside the strategy")

    return _naive(ctx, _Probe(_cell_of(ctx), ctx.params, fail))


@register_strategy("dies", description="Naive that kills its own process on its first attempts (tests)", params=ProbeParams)
def build_dies(ctx):
    cid, params = _cell_of(ctx), ctx.params

    def die():
        counter = Path(params.marker_dir) / f"{cid}.attempts"
        attempts = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(attempts + 1))
        if attempts < params.die_times:
            os.kill(os.getpid(), signal.SIGKILL)

    return _naive(ctx, _Probe(cid, params, die))
