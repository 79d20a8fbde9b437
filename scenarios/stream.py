"""Tensorized streams: every experience is a pair of in-memory tensors.

Scenarios describe each experience as tensors (no per-sample Python
transforms): image streams as lazy index maps over one shared raw base,
decoded per minibatch (`clbench.scenarios.lazy`), text streams as token
tensors. They then hand the experiences to Avalanche's
legacy, task-aware benchmark generator so that every Avalanche strategy
(including LwF, DER and iCaRL, which crash on the new-style generators, see
avalanche_and_anchors.md §0.1) trains on them unchanged. The same test tensors
are kept aside for the runner's batched evaluation of the accuracy matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
    create_multi_dataset_generic_benchmark,
)
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.benchmarks.utils.flat_data import ConstantSequence

from clbench.scenarios.lazy import LazyRows, select_rows


@dataclass
class ScenarioInfo:
    """What strategies and models may know about a scenario."""

    name: str
    scenario_type: str  # class_il | task_il | domain_il
    n_experiences: int
    n_classes: int  # output units of a single-head model
    input_shape: tuple[int, ...]
    classes_per_exp: list[list[int]]  # labels as seen by the model, per experience
    metric_name: str = "accuracy"
    higher_is_better: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # class order, permutation seed, ...

    @property
    def task_labels(self) -> bool:
        return self.scenario_type == "task_il"


@dataclass
class ExperienceTensors:
    x: torch.Tensor | LazyRows  # inputs; image streams keep them lazy (scenarios/lazy.py)
    # int64 labels [N], already remapped for task-IL; or, for language modelling
    # (metric "bpc"), the next-token ids [N, L] of the input windows x [N, L]
    y: torch.Tensor
    task: int

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> list[int]:
        """What Avalanche's `targets` attribute holds: the class labels, or, for a sequence
        target (LM), the experience's task label for every sample: Avalanche only uses
        targets for class bookkeeping, which a language-modelling stream does not have."""
        return self.y.tolist() if self.y.dim() == 1 else [self.task] * len(self.y)


@dataclass
class TensorStream:
    info: ScenarioInfo
    train: list[ExperienceTensors]
    test: list[ExperienceTensors]

    def to_benchmark(self):
        """An Avalanche GenericCLScenario over the same tensors (task-aware datasets)."""
        benchmark = create_multi_dataset_generic_benchmark(
            [to_avalanche_dataset(e) for e in self.train],
            [to_avalanche_dataset(e) for e in self.test],
        )
        if self.info.scenario_type != "domain_il":
            # What nc_benchmark's NCScenario exposes and iCaRL reads: classes per
            # experience and the class order (in the model's label space).
            benchmark.n_classes_per_exp = [len(c) for c in self.info.classes_per_exp]
            benchmark.classes_order = [c for classes in self.info.classes_per_exp for c in classes]
        return benchmark


class TensorLeaf(torch.utils.data.Dataset):
    """(x[i], int(y[i])), exactly what Avalanche's tensor datasets return per sample
    (or (x[i], y[i]) when y holds a target sequence per sample).

    The fast batch path in `clbench.fastdata` recognises this leaf and gathers
    whole minibatches from `x` and `y` at once.
    """

    def __init__(self, x: torch.Tensor | LazyRows, y: torch.Tensor):
        assert len(x) == len(y)
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], (int(self.y[i]) if self.y.dim() == 1 else self.y[i])


def to_avalanche_dataset(exp: ExperienceTensors) -> TaskAwareSupervisedClassificationDataset:
    n = len(exp)
    return TaskAwareSupervisedClassificationDataset(
        [TensorLeaf(exp.x, exp.y)],
        data_attributes=[
            DataAttribute(exp.labels, "targets"),
            DataAttribute(ConstantSequence(exp.task, n), "targets_task_labels", use_in_getitem=True),
        ],
    )


# --------------------------------------------------------------------------- helpers for scenarios
def subsample(x, y: torch.Tensor, n: int | None, rng: np.random.RandomState):
    """A seeded random subset of n samples (all of them when n is None or too large).

    `x` may be a tensor or a `LazyRows` view (then the subset stays lazy)."""
    if n is None or n >= len(y):
        return x, y
    idx = torch.from_numpy(np.sort(rng.choice(len(y), size=n, replace=False)))
    return select_rows(x, idx), y[idx]


def per_class_subsample(x, y: torch.Tensor, per_class: int | None, rng: np.random.RandomState):
    """Keep `per_class` seeded random samples of each class (class-balanced subsets)."""
    if per_class is None:
        return x, y
    keep = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten().numpy()
        keep.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    idx = torch.from_numpy(np.sort(np.concatenate(keep)))
    return select_rows(x, idx), y[idx]


def class_order(n_classes: int, seed: int, fixed: list[int] | None, shuffle: bool) -> list[int]:
    if fixed is not None:
        if sorted(fixed) != list(range(n_classes)):
            from clbench.errors import ConfigError

            raise ConfigError(f"fixed_class_order must be a permutation of 0..{n_classes - 1}, got {fixed}")
        return list(fixed)
    if not shuffle:
        return list(range(n_classes))
    return np.random.RandomState(seed).permutation(n_classes).tolist()


def split_by_classes(
    x_train, y_train, x_test, y_test, *, order: list[int], n_experiences: int, task_il: bool,
    train_per_exp: int | None, test_per_exp: int | None, rng: np.random.RandomState,
):
    """Class-incremental split: experience e gets classes order[e*k:(e+1)*k].

    Class-IL keeps the original labels (single head over all classes); task-IL
    remaps each experience's classes to 0..k-1 (one head per experience).
    """
    n_classes = len(order)
    if n_classes % n_experiences:
        from clbench.errors import ConfigError

        raise ConfigError(f"n_experiences={n_experiences} does not divide the {n_classes} classes")
    k = n_classes // n_experiences
    train, test, classes_per_exp = [], [], []
    for e in range(n_experiences):
        classes = order[e * k:(e + 1) * k]
        lut = torch.full((n_classes,), -1, dtype=torch.long)
        lut[classes] = torch.arange(k) if task_il else torch.tensor(classes)
        streams = []
        for x, y, n in ((x_train, y_train, train_per_exp), (x_test, y_test, test_per_exp)):
            rows = torch.isin(y, torch.tensor(classes)).nonzero().flatten()
            xs, ys = subsample(select_rows(x, rows), y[rows], n, rng)
            streams.append(ExperienceTensors(xs, lut[ys], e if task_il else 0))
        train.append(streams[0])
        test.append(streams[1])
        classes_per_exp.append(list(range(k)) if task_il else classes)
    return train, test, classes_per_exp
