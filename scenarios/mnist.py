"""MNIST-family streams: Permuted and Rotated MNIST (domain-IL), Split MNIST and
Split Fashion-MNIST (class-IL and task-IL).

Profiles set the size: `smoke` is a few hundred samples (tests), `quick` CPU
minutes, `full` the standard protocol. Training defaults are per profile and
cite their protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF

from clbench.registry import register_scenario
from clbench.scenarios.datasets import load_mnist, mnist_files
from clbench.scenarios.lazy import LazyRows, shared_arrays
from clbench.scenarios.stream import (
    ExperienceTensors,
    ScenarioInfo,
    TensorStream,
    class_order,
    split_by_classes,
    subsample,
)

# Canonical per-pixel statistics of the training sets (shared/data/SOURCES.md).
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


_BASES: dict = {}


def load_raw(root, variant: str, download: bool):
    """Both splits as (x uint8 [N, 28, 28], y int64 [N]), shared by every process (memory-mapped)
    and every experience of every stream built in it (scenarios/lazy.py), so memory grows neither
    with the stream length nor with the number of workers."""
    files = {split: mnist_files(root, split, variant) for split in ("train", "test")}
    # A file changed since this process loaded it (size or mtime) is loaded, and checked, again.
    stamp = [(p, p.stat().st_size, p.stat().st_mtime_ns) for f in files.values() for p in f or []]
    key = (str(root), variant)
    if key not in _BASES or _BASES[key][0] != stamp:
        out = []
        for split in ("train", "test"):
            def load(split=split):
                x, y = load_mnist(root, split, download=download, variant=variant)
                return x, y.long()

            out += load() if files[split] is None else shared_arrays(f"{variant}-{split}", files[split], load)
        _BASES[key] = (stamp, out)
    return _BASES[key][1]


def normalizer(variant: str):
    """uint8 [B, 28, 28] -> normalized float32 [B, 1, 28, 28].

    A normalized pixel depends only on its uint8 value, so the 256 values are computed
    once, by the very expression a whole-split normalisation used (bitwise the same
    floats), and each batch is one table lookup, much cheaper than the arithmetic,
    which matters because lazy streams normalise every batch of every epoch and pass."""
    mean, std = NORMALIZATION[variant]
    table = (torch.arange(256, dtype=torch.uint8).float() / 255.0 - mean) / std
    return lambda x: table.index_select(0, x.flatten().int()).view(len(x), 1, *x.shape[1:])


def load_lazy(root, variant: str, download: bool):
    """Both splits as (LazyRows of normalized images, labels) over the shared raw base."""
    x_tr, y_tr, x_te, y_te = load_raw(root, variant, download)
    decode = normalizer(variant)
    return LazyRows(x_tr, torch.arange(len(y_tr)), decode), y_tr, LazyRows(x_te, torch.arange(len(y_te)), decode), y_te


def load_normalized(root, variant: str, download: bool):
    """Both splits as float32 [N, 1, 28, 28], normalized (materialised; references and tools)."""
    x_tr, y_tr, x_te, y_te = load_lazy(root, variant, download)
    return [x_tr.materialize(), y_tr, x_te.materialize(), y_te]


# --------------------------------------------------------------------------- domain-IL
@dataclass
class DomainOptions:
    n_experiences: int = 10
    train_per_exp: int | None = None  # seeded subsample of the 60k training images
    test_per_exp: int | None = None
    angles: list[float] | None = None  # rotated_mnist only; default: seeded uniform in [0, 180)

    def __post_init__(self):
        if self.n_experiences < 1:
            raise ValueError("n_experiences must be >= 1")


_PMNIST_TRAIN = {
    # Single-pass protocol of GEM / A-GEM (Lopez-Paz & Ranzato 2017; Chaudhry et
    # al. 2019): 1 epoch, SGD lr 0.1, minibatch 10. quick keeps the optimizer and
    # uses a larger batch to fit CPU minutes.
    "smoke": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "train_mb_size": 32},
    "quick": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "train_mb_size": 32},
    "full": {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "train_mb_size": 10},
}
DOMAIN_PROFILES = {
    "smoke": {"scenario": {"n_experiences": 3, "train_per_exp": 256, "test_per_exp": 256}, "train": _PMNIST_TRAIN["smoke"]},
    # quick: 10 x 5000 at minibatch 32 is the shortest stream on which naive forgets >= 10 pp
    # (15.0 +- 2.3 pp, plasticity 85%) for the same 50k training images as the 5 x 10000 it
    # replaced (4.6 pp); 1000 test images per experience keep the 10 x 10 matrix cheap.
    # Measured: benchmarks/pmnist_length.md (issue 15).
    "quick": {"scenario": {"n_experiences": 10, "train_per_exp": 5000, "test_per_exp": 1000},
              "train": _PMNIST_TRAIN["quick"]},
    "full": {"scenario": {"n_experiences": 10}, "train": _PMNIST_TRAIN["full"]},
}


def _domain_stream(name, opts: DomainOptions, seed, root, download, make_transform) -> TensorStream:
    x_tr, y_tr, x_te, y_te = load_lazy(root, "mnist", download)
    rng = np.random.RandomState(seed)
    train, test, extra = [], [], {"domain": []}
    for e in range(opts.n_experiences):
        transform, description = make_transform(e, rng)
        extra["domain"].append(description)
        for x, y, n, out in ((x_tr, y_tr, opts.train_per_exp, train), (x_te, y_te, opts.test_per_exp, test)):
            xs, ys = subsample(x, y, n, rng)
            out.append(ExperienceTensors(xs.then(transform), ys, 0))  # applied per batch
    info = ScenarioInfo(name, "domain_il", opts.n_experiences, 10, (1, 28, 28), [list(range(10))] * opts.n_experiences, extra=extra)
    return TensorStream(info, train, test)


@register_scenario(
    "pmnist", description="Permuted MNIST: each experience applies a fixed seeded pixel permutation (domain-IL, 10-way head)",
    scenario_type="domain_il", options=DomainOptions, profiles=DOMAIN_PROFILES,
)
def build_pmnist(opts: DomainOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    def permutation(e, rng):
        perm = torch.from_numpy(rng.permutation(28 * 28))
        # The permutation itself is recorded (as a checksum-able list) so runs can be audited.
        return (lambda x: x.flatten(1)[:, perm].view_as(x)), {"permutation": perm.tolist()}

    return _domain_stream("pmnist", opts, seed, data_root, download, permutation)


@register_scenario(
    "rotated_mnist", description="Rotated MNIST: each experience rotates all digits by a fixed seeded angle (domain-IL)",
    scenario_type="domain_il", options=DomainOptions, profiles=DOMAIN_PROFILES,
)
def build_rotated_mnist(opts: DomainOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    if opts.angles is not None and len(opts.angles) != opts.n_experiences:
        from clbench.errors import ConfigError

        raise ConfigError(f"rotated_mnist: {len(opts.angles)} angles given for {opts.n_experiences} experiences")

    def rotation(e, rng):
        angle = float(opts.angles[e]) if opts.angles is not None else float(rng.uniform(0, 180))
        # Rotate in pixel space with the background value, not 0 (the data is normalized).
        fill = -NORMALIZATION["mnist"][0] / NORMALIZATION["mnist"][1]
        return (lambda x: TF.rotate(x, angle, fill=fill)), {"angle": angle}

    return _domain_stream("rotated_mnist", opts, seed, data_root, download, rotation)


# --------------------------------------------------------------------------- class-IL / task-IL
@dataclass
class SplitOptions:
    n_experiences: int = 5
    train_per_exp: int | None = None
    test_per_exp: int | None = None
    fixed_class_order: list[int] | None = None
    shuffle_classes: bool = True  # class order drawn from the seed unless fixed

    def __post_init__(self):
        if self.n_experiences < 1:
            raise ValueError("n_experiences must be >= 1")


_SPLIT_TRAIN = {
    # van de Ven, Tuytelaars & Tolias (2022), split MNIST: Adam lr 1e-3, batch
    # 128, 2000 iterations per context (~21 epochs of 12k images). quick runs one
    # epoch; full approximates the 2000 iterations with 20 epochs.
    "smoke": {"optimizer": "adam", "lr": 5e-3, "epochs": 2, "train_mb_size": 32},
    "quick": {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "train_mb_size": 128},
    "full": {"optimizer": "adam", "lr": 1e-3, "epochs": 20, "train_mb_size": 128},
}
SPLIT_PROFILES = {
    "smoke": {"scenario": {"train_per_exp": 200, "test_per_exp": 200}, "train": _SPLIT_TRAIN["smoke"]},
    "quick": {"scenario": {}, "train": _SPLIT_TRAIN["quick"]},
    "full": {"scenario": {}, "train": _SPLIT_TRAIN["full"]},
}


def _split_stream(name, variant, opts: SplitOptions, seed, root, download, task_il) -> TensorStream:
    x_tr, y_tr, x_te, y_te = load_lazy(root, variant, download)
    order = class_order(10, seed, opts.fixed_class_order, opts.shuffle_classes)
    rng = np.random.RandomState(seed)
    train, test, classes_per_exp = split_by_classes(
        x_tr, y_tr, x_te, y_te, order=order, n_experiences=opts.n_experiences, task_il=task_il,
        train_per_exp=opts.train_per_exp, test_per_exp=opts.test_per_exp, rng=rng,
    )
    info = ScenarioInfo(
        name, "task_il" if task_il else "class_il", opts.n_experiences, 10, (1, 28, 28), classes_per_exp,
        extra={"class_order": order},
    )
    return TensorStream(info, train, test)


def _register_split(name: str, variant: str, task_il: bool, what: str) -> None:
    kind = "task-IL, one head per experience" if task_il else "class-IL, single 10-way head"

    @register_scenario(
        name, description=f"Split {what}: 5 experiences x 2 classes, seeded class order ({kind})",
        scenario_type="task_il" if task_il else "class_il", options=SplitOptions, profiles=SPLIT_PROFILES,
    )
    def build(opts: SplitOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
        return _split_stream(name, variant, opts, seed, data_root, download, task_il)


_register_split("split_mnist", "mnist", False, "MNIST")
_register_split("split_mnist_til", "mnist", True, "MNIST")
_register_split("split_fmnist", "fashion_mnist", False, "Fashion-MNIST")
_register_split("split_fmnist_til", "fashion_mnist", True, "Fashion-MNIST")
