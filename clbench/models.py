"""Standard, comparable models for the image streams, registered by name.

Every model exposes `features` (input -> embedding) and `classifier`
(embedding -> logits), so that strategies that need the split (iCaRL) work on
all of them. Task-IL variants pre-allocate one head per experience, so the
parameter set never changes during a run (dynamic heads would silently enter
the optimizer mid-run, see avalanche_and_anchors.md §0.3).
"""

from __future__ import annotations

import math

import torch
from avalanche.models import MultiTaskModule
from avalanche.models.slim_resnet18 import SlimResNet18
from torch import nn
from torch.nn.functional import avg_pool2d, relu

from clbench.registry import register_model

# MLP widths: 2x256 is the A-GEM / continual-learning-baselines P-MNIST MLP;
# 2x1000 is the "full" MLP of van de Ven et al. (2022, "Three types of
# incremental learning", permuted/split MNIST).
MLP_HIDDEN = {"smoke": 64, "quick": 256, "full": 1000}


class FeatureClassifier(nn.Module):
    """Single head: `classifier(features(x))`."""

    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TaskHeads(nn.Module):
    """One linear head per task, all created up front."""

    def __init__(self, in_features: int, n_tasks: int, classes_per_task: int):
        super().__init__()
        self.classes_per_task = classes_per_task
        self.heads = nn.ModuleList(nn.Linear(in_features, classes_per_task) for _ in range(n_tasks))

    def forward(self, h: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.heads[task_label](h)


class MultiHeadNet(MultiTaskModule):
    """Shared `features`, one head per task (task-IL).

    Avalanche's MultiTaskModule.forward splits a minibatch by task label and
    calls `forward_single_task`; with no labels it returns every seen head's
    output as a dict, which LwF relies on.
    """

    def __init__(self, features: nn.Module, classifier: TaskHeads):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.max_class_label = classifier.classes_per_task

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.classifier(self.features(x), task_label)


def with_head(features: nn.Module, in_features: int, info) -> nn.Module:
    """Single head over all classes, or one head per experience for task-IL."""
    if info.scenario_type == "task_il":
        heads = TaskHeads(in_features, info.n_experiences, max(len(c) for c in info.classes_per_exp))
        return MultiHeadNet(features, heads)
    return FeatureClassifier(features, nn.Linear(in_features, info.n_classes))


def mlp_features(in_features: int, hidden: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*mods)


@register_model("mlp", description="2-layer ReLU MLP (2x256 quick, 2x1000 full); multi-head for task-IL")
def build_mlp(info, profile: str, hidden: int | None = None, layers: int = 2) -> nn.Module:
    hidden = hidden or MLP_HIDDEN[profile]
    if hidden < 1 or layers < 1:
        raise ValueError(f"mlp needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
    return with_head(mlp_features(math.prod(info.input_shape), hidden, layers), hidden, info)


class SlimResNetFeatures(nn.Module):
    """Avalanche's SlimResNet18 (reduced ResNet-18, nf=20) without its linear layer."""

    def __init__(self, nf: int = 20):
        super().__init__()
        self.net = SlimResNet18(1, nf=nf)
        self.out_features = self.net.linear.in_features
        del self.net.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        out = relu(n.bn1(n.conv1(x.view(x.size(0), 3, 32, 32))))
        out = n.layer4(n.layer3(n.layer2(n.layer1(out))))
        return avg_pool2d(out, 4).flatten(1)


@register_model("slim_resnet18", description="Avalanche's reduced ResNet-18 (nf=20) for 32x32 RGB; multi-head for task-IL")
def build_slim_resnet18(info, profile: str, nf: int = 20) -> nn.Module:
    features = SlimResNetFeatures(nf)
    return with_head(features, features.out_features, info)


@register_model(
    "resnet18",
    description="ResNet-18 for 32x32 RGB, nf=64 (about 11M parameters): Mammoth's seq-cifar100 backbone; multi-head for task-IL",
)
def build_resnet18(info, profile: str) -> nn.Module:
    # Avalanche's SlimResNet18 at nf=64 is layer for layer Mammoth's backbone/ResNet18.py
    # resnet18(nf=64): 3x3 stem at stride 1, no max-pool, BasicBlocks [2, 2, 2, 2] at
    # widths 64/128/256/512, 4x4 average pool, one linear layer (docs/cifar_scratch.md).
    features = SlimResNetFeatures(nf=64)
    return with_head(features, features.out_features, info)


class Conv4Features(nn.Module):
    """Four blocks of 3x3 conv (64 channels) + BatchNorm + ReLU + 2x2 max-pool: 32x32 -> 2x2x64.

    The "Conv-4" of Vinyals et al. (2016). About 14M multiply-adds per image against
    ResNet-18's 0.56G, so a multi-epoch Split CIFAR-100 cell fits minutes on one CPU core.
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for _ in range(4):
            layers += [nn.Conv2d(width, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2)]
            width = channels
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = channels * 2 * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(x.size(0), 3, 32, 32))


@register_model("conv4", description="Conv-4: 4 x (conv 3x3, 64 ch, BN, ReLU, max-pool) for 32x32 RGB; the CPU quick model of Split CIFAR-100")
def build_conv4(info, profile: str, channels: int = 64) -> nn.Module:
    if channels < 1:
        raise ValueError(f"conv4 needs channels >= 1, got {channels}")
    features = Conv4Features(channels)
    return with_head(features, features.out_features, info)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
