"""Split CIFAR-100: 10 or 20 experiences, class-IL and task-IL.

Reads the offline WebP-sprite copy or torchvision's `cifar-100-python` (see
`clbench.scenarios.cifar100_data`). Images stay uint8 in one shared base and are
normalized into float32 NCHW per minibatch (`clbench.scenarios.lazy`); training-time augmentation, where a strategy wants it, is done
on whole minibatches (never per sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clbench.registry import register_scenario
from clbench.scenarios.cifar100_data import load_cifar100
from clbench.scenarios.lazy import LazyRows
from clbench.scenarios.stream import (
    ScenarioInfo,
    TensorStream,
    class_order,
    per_class_subsample,
    split_by_classes,
)

# Canonical training-set channel statistics (shared/data/CIFAR100/README.md).
MEAN = torch.tensor([0.5071, 0.4865, 0.4409]).view(1, 3, 1, 1)
STD = torch.tensor([0.2673, 0.2564, 0.2762]).view(1, 3, 1, 1)


@dataclass
class CifarOptions:
    n_experiences: int = 10
    train_per_class: int | None = None  # seeded class-balanced subsample (500 = all)
    test_per_class: int | None = None  # (100 = all)
    fixed_class_order: list[int] | None = None
    shuffle_classes: bool = True

    def __post_init__(self):
        if self.n_experiences not in (2, 5, 10, 20, 25, 50, 100):
            raise ValueError(f"n_experiences must divide 100 classes (10 or 20 are standard), got {self.n_experiences}")


CIFAR_PROFILES = {
    "smoke": {
        "scenario": {"n_experiences": 10, "train_per_class": 5, "test_per_class": 5},
        "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 1, "train_mb_size": 32, "eval_mb_size": 256},
    },
    # CPU quick profile (docs/cifar_scratch.md, "The quick profile"): Conv-4, 100 train / 20
    # test images per class, 2 epochs, batch 32, SGD lr 0.03 WITHOUT momentum. With momentum
    # 0.9 (lr 0.01 or 0.05) or Adam (1e-3, 3e-4) the newest task's accuracy decays from ~0.5
    # to 0.1-0.2 by the last experience (loss of plasticity; with momentum, up to 77% of
    # Conv-4's features dead); SGD lr 0.03, momentum 0 keeps learning every task. Measured on
    # one thread, seeds 0-1: final ACC naive 0.045/0.051, replay 0.085/0.086, der 0.064/0.091;
    # cell wall naive 70-80 s, replay/der 145-175 s (load 1.4-4.0).
    "quick": {
        "scenario": {"n_experiences": 10, "train_per_class": 100, "test_per_class": 20},
        "train": {"model": "conv4", "optimizer": "sgd", "lr": 0.03, "momentum": 0.0, "epochs": 2,
                  "train_mb_size": 32, "eval_mb_size": 256},
    },
    # Mammoth seq-cifar100 (Buzzega et al. 2020; Boschini et al. 2022, X-DER Table I):
    # ResNet-18 (nf=64), 50 epochs, batch 32, SGD lr 0.1 (momentum 0, weight decay 0),
    # MultiStepLR [35, 45] x 0.2 reset every task, crop+flip augmentation. GPU only.
    # Per-method lr / buffer settings: suites/cifar_full.toml (docs/cifar_scratch.md).
    "full": {
        "scenario": {"n_experiences": 10},
        "train": {"model": "resnet18", "plugins": ["crop_flip", "multistep_lr"], "optimizer": "sgd", "lr": 0.1,
                  "momentum": 0.0, "weight_decay": 0.0, "epochs": 50, "train_mb_size": 32, "eval_mb_size": 512},
    },
}


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalized float32 NCHW; elementwise, so per batch gives the whole-split values."""
    return (x.permute(0, 3, 1, 2).float().div_(255.0) - MEAN) / STD


def _lazy(root, split: str, download: bool):
    """(LazyRows over the raw uint8 images, labels): one base per split, shared by every experience."""
    data = load_cifar100(root, split, download=download)
    return LazyRows(data.x, torch.arange(len(data)), _normalize), data.fine.long()


def _cifar_stream(name: str, opts: CifarOptions, seed: int, root, download: bool, task_il: bool) -> TensorStream:
    rng = np.random.RandomState(seed)
    x_tr, y_tr = _lazy(root, "train", download)
    x_te, y_te = _lazy(root, "test", download)
    x_tr, y_tr = per_class_subsample(x_tr, y_tr, opts.train_per_class, rng)
    x_te, y_te = per_class_subsample(x_te, y_te, opts.test_per_class, rng)
    order = class_order(100, seed, opts.fixed_class_order, opts.shuffle_classes)
    train, test, classes_per_exp = split_by_classes(
        x_tr, y_tr, x_te, y_te, order=order, n_experiences=opts.n_experiences, task_il=task_il,
        train_per_exp=None, test_per_exp=None, rng=rng,
    )
    info = ScenarioInfo(
        name, "task_il" if task_il else "class_il", opts.n_experiences, 100, (3, 32, 32), classes_per_exp,
        extra={"class_order": order},
    )
    return TensorStream(info, train, test)


@register_scenario(
    "split_cifar100", description="Split CIFAR-100: 10 (or 20) experiences of disjoint classes, class-IL, 100-way head",
    scenario_type="class_il", options=CifarOptions, profiles=CIFAR_PROFILES, default_model="slim_resnet18",
)
def build_split_cifar100(opts: CifarOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    return _cifar_stream("split_cifar100", opts, seed, data_root, download, task_il=False)


@register_scenario(
    "split_cifar100_til", description="Split CIFAR-100, task-IL: one head per experience, task label given at test time",
    scenario_type="task_il", options=CifarOptions, profiles=CIFAR_PROFILES, default_model="slim_resnet18",
)
def build_split_cifar100_til(opts: CifarOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    return _cifar_stream("split_cifar100_til", opts, seed, data_root, download, task_il=True)
