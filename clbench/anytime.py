"""Anytime evaluation: accuracy on every seen task *during* training (`train.eval_every = N`).

End-of-experience matrices cannot see the stability gap (De Lange et al., ICLR 2023): the
sharp drop of old-task accuracy in the first iterations on a new task, and its recovery.
This plugin evaluates the model every N training iterations on a fixed, small subset of
every test experience seen so far (the current one included), and the runner stores the
curve in the cell's result (`result["anytime"]`, docs/results_schema.md).

Why not Avalanche's periodic evaluation (`eval_every` with `peval_mode="iteration"`)? It
runs the strategy's whole eval loop (callbacks, metric objects, data loaders) on full eval
streams; clbench already evaluates from cached test tensors (clbench.evaluation) and only
needs a few hundred samples per task, so the curve costs a fraction of the training time
(benchmarks/anytime_overhead.md measures it).

Training is untouched: the subsets are drawn with a generator of their own (the global RNG
that shuffles minibatches is not consumed), evaluation runs under no_grad in eval mode and
restores train mode, and tests/test_anytime.py checks that the accuracy matrix of a cell is
the same with and without the curve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin

from clbench.evaluation import evaluate_row, hits

# Mixed into the cell seed so the subsets do not coincide with anything else drawn from it.
_SUBSET_SALT = 0x5A17E


@dataclass
class SubsetExperience:
    """The slice of a test experience that anytime evaluation scores (same fields evaluate_row reads)."""

    x: torch.Tensor
    y: torch.Tensor
    task: int


def fixed_subsets(test_experiences, size: int, seed: int) -> list[SubsetExperience]:
    """The same `size` samples of each test experience at every evaluation of the cell."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + _SUBSET_SALT)
    subsets = []
    for exp in test_experiences:
        n = len(exp.y)
        index = torch.randperm(n, generator=generator)[: min(size, n)].sort().values
        subsets.append(SubsetExperience(exp.x[index], exp.y[index], exp.task))
    return subsets


class AnytimeEvaluation(SupervisedPlugin):
    """Records (iteration, experience, accuracy on each seen task) every `every` iterations of
    each experience, counted from its start.

    The runner calls `start_experience(i, model)` before training on experience i (a point
    at the switch: the old tasks' accuracy just before the new task starts) and `finish(model)`
    after the last one. Iterations count minibatch updates across experiences and epochs.
    """

    def __init__(self, subsets: list[SubsetExperience], every: int, *, device, batch_size: int, metric: str):
        super().__init__()
        self.subsets, self.every = subsets, every
        self.device, self.batch_size, self.metric = device, batch_size, metric
        self.iteration = 0
        self.since_switch = 0  # iterations into the current experience: the grid restarts at each switch
        self.experience, self.seen = 0, 1
        self.boundaries: list[int] = []  # iteration at which each experience started
        self.points: list[tuple[int, int, list[float | None]]] = []
        self._joined: dict[int, tuple] = {}  # seen-task count -> concatenated subsets
        self.seconds = 0.0  # time spent evaluating
        self.seconds_in_training = 0.0  # the part spent inside strategy.train: kept out of its throughput

    def start_experience(self, index: int, model: torch.nn.Module, *, seen: int | None = None) -> None:
        self.experience = index
        self.seen = index + 1 if seen is None else seen
        self.since_switch = 0
        self.boundaries.append(self.iteration)
        self.record(model)

    def after_training_iteration(self, strategy, *args, **kwargs):
        self.iteration += 1
        self.since_switch += 1
        # Counted from the switch, so every experience is read at the same offsets and the
        # curves of different switches (and seeds) line up point by point.
        if self.since_switch % self.every == 0:
            self.seconds_in_training += self.record(strategy.model)

    def finish(self, model: torch.nn.Module) -> None:
        if not self.points or self.points[-1][0] != self.iteration:
            self.record(model)

    def record(self, model: torch.nn.Module) -> float:
        """Evaluate the seen tasks' subsets now; returns the seconds it took."""
        t0 = time.perf_counter()
        seen = self.subsets[: self.seen]
        if self.metric == "accuracy":
            values = self._accuracy_in_one_pass(model, seen)
        else:
            values = evaluate_row(model, seen, device=self.device, batch_size=self.batch_size, metric=self.metric)
        padded = list(values) + [None] * (len(self.subsets) - len(seen))  # unseen tasks: not evaluated
        self.points.append((self.iteration, self.experience, padded))
        elapsed = time.perf_counter() - t0
        self.seconds += elapsed
        return elapsed

    def _accuracy_in_one_pass(self, model: torch.nn.Module, seen: list[SubsetExperience]) -> list[float]:
        """evaluate_row's accuracies, with all seen subsets in one batch: a few hundred samples
        cost one forward call instead of one per task (the per-call overhead dominates at this size)."""
        if len(seen) not in self._joined:
            self._joined[len(seen)] = (
                torch.cat([s.x for s in seen]), torch.cat([s.y for s in seen]),
                torch.cat([torch.full((len(s.y),), s.task, dtype=torch.long) for s in seen]),
            )
        x, y, task = self._joined[len(seen)]
        was_training = model.training
        model.eval()
        try:
            correct = hits(model, x, y, task, device=self.device, batch_size=self.batch_size)
        finally:
            model.train(was_training)
        # correct / n in Python floats, as clbench.evaluation.accuracy computes it
        return [part.sum().item() / max(len(part), 1) for part in correct.split([len(s.y) for s in seen])]

    def curve(self) -> dict:
        """The JSON form stored as result["anytime"]."""
        return {
            "eval_every": self.every,
            "subset_size": [len(s.y) for s in self.subsets],
            "boundaries": list(self.boundaries),
            "iteration": [p[0] for p in self.points],
            "experience": [p[1] for p in self.points],
            "values": [p[2] for p in self.points],
            "seconds": self.seconds,
        }
