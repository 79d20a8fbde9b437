"""Split CIFAR-100 on frozen ImageNet MobileNetV2 features (docs/cifar_pretrained.md).

The same stream as `split_cifar100` for the same seed and options (class order,
subsamples, experience split: built by the same `_cifar_stream`), except that every image
is replaced by its features from torchvision's ImageNet-1k MobileNetV2, frozen:

- features = "pooled": x float32 [1280], the spatial mean of the last feature map
  (exactly what MobileNetV2's classifier reads);
- features = "tokens": x float32 [T, 1280], that map as T = (R/32)^2 spatial tokens.

Images are upsampled (bilinear) from 32 px to `resolution` px first. There is no data
augmentation in this track: an image's features are computed once, alone, and cached
per image (`clbench.vision.features`), so every epoch sees the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clbench.registry import register_scenario
from clbench.scenarios.cifar100 import CifarOptions, _cifar_stream
from clbench.scenarios.lazy import LazyRows
from clbench.scenarios.stream import TensorStream
from clbench.vision import backbone as bb
from clbench.vision.features import KINDS, FeatureTable, feature_shape

# Chosen from benchmarks/cifar_resolution.md (probe accuracy against cost per image).
DEFAULT_RESOLUTION = 160
MIN_RESOLUTION = 64

_TRAIN = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "epochs": 1, "train_mb_size": 32, "eval_mb_size": 512}
FEATURE_PROFILES = {
    # A few images per class: the test profile (400 images to compute on a cold cache).
    "smoke": {"scenario": {"n_experiences": 10, "train_per_class": 2, "test_per_class": 2},
              "train": {**_TRAIN, "lr": 0.05, "momentum": 0.0}},
    # Every image: with the features cached, an MLP epoch over 50k vectors is cheap.
    "quick": {"scenario": {"n_experiences": 10}, "train": _TRAIN},
    "full": {"scenario": {"n_experiences": 10}, "train": {**_TRAIN, "epochs": 5}},
}


@dataclass
class CifarFeatureOptions(CifarOptions):
    backbone: str = "mobilenet_v2"
    resolution: int = DEFAULT_RESOLUTION  # px; a multiple of 32, at least 64
    features: str = "pooled"  # "pooled" -> x [1280]; "tokens" -> x [(R/32)^2, 1280]

    def __post_init__(self):
        super().__post_init__()
        if self.backbone not in bb.BACKBONES:
            raise ValueError(f"bad backbone {self.backbone!r}; accepted: {', '.join(bb.BACKBONES)}")
        if self.resolution < MIN_RESOLUTION or self.resolution % bb.STRIDE:
            raise ValueError(
                f"bad resolution {self.resolution!r}; accepted: a multiple of {bb.STRIDE} from {MIN_RESOLUTION} "
                f"(96, 128, 160 and 224 are measured in benchmarks/cifar_resolution.md)"
            )
        if self.features not in KINDS:
            raise ValueError(f"bad features {self.features!r}; accepted: {', '.join(KINDS)}")


def _featurize(exps, table: FeatureTable) -> None:
    """Swap each experience's lazy image rows for lazy feature rows of the same images.

    The feature base holds only the image ids the stream uses, so the rows computed
    (all of them now, with a progress bar, rather than minibatch by minibatch during
    training) are exactly those; the validation split later only re-partitions them."""
    used = np.unique(np.concatenate([e.x.index.numpy() for e in exps]))
    table.ensure(used)
    base = torch.from_numpy(used)
    for e in exps:
        positions = torch.from_numpy(np.searchsorted(used, e.x.index.numpy()))
        e.x = LazyRows(base, positions, table.get)


def build_features_stream(name: str, opts: CifarFeatureOptions, seed: int, data_root, download: bool) -> TensorStream:
    stream = _cifar_stream(name, opts, seed, data_root, download, task_il=False)
    for exps in (stream.train, stream.test):
        images = exps[0].x.base  # the split's uint8 base, shared by its experiences
        table = FeatureTable(images, backbone=opts.backbone, resolution=opts.resolution, kind=opts.features,
                             data_root=data_root, download=download)
        _featurize(exps, table)
    shape = feature_shape(opts.features, opts.resolution)
    stream.info.input_shape = shape
    stream.info.extra["features"] = {
        "backbone": opts.backbone, "weights": {"file": bb.WEIGHTS_FILE, "sha256": table.weights_sha},
        "resolution": opts.resolution, "kind": opts.features,
        "n_tokens": shape[0] if opts.features == "tokens" else 1, "dim": bb.DIM, "augmentation": "none",
    }
    return stream


@register_scenario(
    "split_cifar100_features",
    description="Split CIFAR-100 (as split_cifar100) on frozen ImageNet MobileNetV2 features, "
    "pooled [1280] or tokens [(R/32)^2, 1280]; class-IL, no augmentation",
    scenario_type="class_il", options=CifarFeatureOptions, profiles=FEATURE_PROFILES, default_model="mlp",
)
def build_split_cifar100_features(opts: CifarFeatureOptions, profile: str, seed: int, data_root, download: bool) -> TensorStream:
    return build_features_stream("split_cifar100_features", opts, seed, data_root, download)
