"""Nearest class mean over frozen features; with the cosine metric this is SimpleCIL
(Zhou et al. 2023, "Revisiting class-incremental learning with pre-trained models").

No training: each class's prototype is the mean of its (flattened) input
features over every training sample seen so far, and a sample goes to the
prototype with the highest cosine similarity (SimpleCIL) or the smallest
Euclidean distance (classic NCM, `metric="euclidean"`). Prototypes are exact
running means (sums and counts), so a class that returns in a later
experience (domain-IL) is averaged over all its samples. See docs/closed_form.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clbench.closed_form import ClosedFormHead, closed_form_template
from clbench.registry import register_strategy

METRICS = ("cosine", "euclidean")


class NCMHead(ClosedFormHead):
    def __init__(self, in_features: int, n_classes: int, metric: str = "cosine"):
        super().__init__(in_features, n_classes)
        if metric not in METRICS:
            raise ValueError(f"bad metric {metric!r}; accepted: {', '.join(METRICS)}")
        self.metric = metric
        self.register_buffer("sums", torch.zeros(n_classes, in_features, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(n_classes, dtype=torch.float64))

    def accumulate(self, z: torch.Tensor, y: torch.Tensor) -> None:
        self.sums.index_add_(0, y, z)
        self.counts += torch.bincount(y, minlength=self.n_classes).double()

    @property
    def prototypes(self) -> torch.Tensor:
        """Class means [n_classes, d]; rows of unseen classes are 0 (and masked in `forward`)."""
        return self.sums / self.counts.clamp(min=1).unsqueeze(1)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            return F.normalize(z, dim=1) @ F.normalize(self.prototypes, dim=1).T
        return -torch.cdist(z, self.prototypes)  # nearest mean = highest score


@dataclass
class NCMParams:
    metric: str = "cosine"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"bad metric {self.metric!r}; accepted: {', '.join(METRICS)}")


@register_strategy(
    "ncm", description="NCM / SimpleCIL: class-mean prototypes of the frozen input features, cosine "
    "(or euclidean) nearest mean; no training", supports=("class_il", "domain_il"), params=NCMParams,
    defaults={"*": {"train.epochs": 1}},  # one statistics pass is the method
)
def build(ctx):
    return closed_form_template(ctx, NCMHead(math.prod(ctx.info.input_shape), ctx.info.n_classes, ctx.params.metric))
