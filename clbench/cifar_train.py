"""Training-time pieces of the from-scratch Split CIFAR-100 track (docs/cifar_scratch.md).

* plugin `crop_flip`: Mammoth's seq-cifar100 training augmentation, RandomCrop(32,
  padding=4) then RandomHorizontalFlip, done on whole minibatches of normalised
  tensors in `before_forward`. Avalanche calls `before_forward` in training only
  (evaluation has `before_eval_forward`, and clbench evaluates with its own loop),
  so test images are never augmented.
* plugin `multistep_lr`: Avalanche's LRSchedulerPlugin over torch's MultiStepLR,
  stepped per epoch and reset (schedule and lr) after every experience, as Mammoth
  rebuilds its optimizer and scheduler at the start of every task.
* `AmpPlugin`: bf16 autocast around the forward pass on CUDA (`train.amp = true`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin

from clbench.errors import ConfigError
from clbench.registry import register_plugin

# Streams whose inputs are CIFAR-100 normalised with clbench.scenarios.cifar100's MEAN/STD.
CIFAR_SCENARIOS = ("split_cifar100", "split_cifar100_til")


def crop_flip(x: torch.Tensor, padding: int, fill: torch.Tensor, generator: torch.Generator,
              flip: bool = True) -> torch.Tensor:
    """Random crop (after padding every side by `padding` with `fill`, one value per
    channel) and random horizontal flip of every image of an NCHW batch.

    Offsets and flips are drawn on the CPU from `generator`, so a run is the same on any
    device. Padding a normalised image with the normalised black pixel equals
    torchvision's zero-padding of the raw image followed by Normalize.
    """
    n, c, h, w = x.shape
    padded = fill.to(x.device, x.dtype).view(1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)  # [n, h]
    cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)  # [n, w]
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirrored.to(x.device).view(n, 1), cols.flip(1), cols)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # [n, h, w, c] from one gather, back to NCHW.
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2).contiguous()


@dataclass
class CropFlipParams:
    padding: int = 4  # Mammoth / torchvision RandomCrop(32, padding=4)
    flip: bool = True

    def __post_init__(self):
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")


class CropFlipPlugin(SupervisedPlugin):
    def __init__(self, fill: torch.Tensor, params: CropFlipParams, seed: int):
        super().__init__()
        self.fill, self.params = fill, params
        # Its own generator: the augmentation draws do not shift any other random stream.
        self.generator = torch.Generator().manual_seed(seed)

    def before_forward(self, strategy, **kwargs):
        strategy.mbatch[0] = crop_flip(strategy.mbatch[0], self.params.padding, self.fill, self.generator,
                                       self.params.flip)


@register_plugin(
    "crop_flip", params=CropFlipParams,
    description="training augmentation of Split CIFAR-100: random crop (padding 4) + horizontal flip per minibatch",
)
def build_crop_flip(info, config, params: CropFlipParams) -> SupervisedPlugin:
    if info.name not in CIFAR_SCENARIOS:
        raise ConfigError(f"plugin crop_flip does not apply to scenario {info.name!r}; accepted: {', '.join(CIFAR_SCENARIOS)}")
    from clbench.scenarios.cifar100 import MEAN, STD

    black = ((0.0 - MEAN) / STD).flatten()  # a zero raw pixel, normalised
    return CropFlipPlugin(black, params, seed=config.seed)


@dataclass
class MultiStepParams:
    # Mammoth's seq-cifar100 under datasets/configs/seq-cifar100/xder.yaml, the config
    # models/config/derpp.yaml uses at buffer 500 (the dataset's own default gamma is 0.1).
    milestones: list[int] = field(default_factory=lambda: [35, 45])
    gamma: float = 0.2

    def __post_init__(self):
        if not self.milestones or any(m < 1 for m in self.milestones) or sorted(self.milestones) != self.milestones:
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


class MultiStepLRPlugin(LRSchedulerPlugin):
    """LRSchedulerPlugin whose MultiStepLR is built on the strategy's own optimizer.

    Plugins are built before the strategy (and so before its optimizer), hence the
    scheduler is created at `before_training`, once; Avalanche keeps one optimizer
    object for the whole run.
    """

    def __init__(self, params: MultiStepParams):
        self.params = params
        self._built = False

    def before_training(self, strategy, **kwargs):
        if not self._built:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(strategy.optimizer, self.params.milestones,
                                                             gamma=self.params.gamma)
            super().__init__(scheduler, reset_scheduler=True, reset_lr=True, step_granularity="epoch")
            self._built = True
        return super().before_training(strategy, **kwargs)


@register_plugin(
    "multistep_lr", params=MultiStepParams,
    description="MultiStepLR per epoch, reset every experience (Mammoth seq-cifar100: milestones 35, 45, gamma 0.2)",
)
def build_multistep_lr(info, config, params: MultiStepParams) -> SupervisedPlugin:
    return MultiStepLRPlugin(params)


class AmpPlugin(SupervisedPlugin):
    """Mixed precision: the forward pass under autocast, its output back in float32.

    bf16 keeps fp32's exponent range, so no loss scaler is needed (fp16 would need a
    GradScaler around Avalanche's backward and optimizer step). The output is cast to
    float32 so that every loss (cross-entropy, DER's logit MSE against stored float32
    logits, LwF's distillation) is computed in float32. Evaluation stays float32.
    """

    def __init__(self, device_type: str = "cuda", dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.device_type, self.dtype = device_type, dtype
        self._ctx = None

    def before_forward(self, strategy, **kwargs):
        self._ctx = torch.autocast(self.device_type, dtype=self.dtype)
        self._ctx.__enter__()

    def after_forward(self, strategy, **kwargs):
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
        strategy.mb_output = strategy.mb_output.float()


def amp_plugin(device: torch.device) -> AmpPlugin:
    """The plugin for `train.amp = true`; refused off CUDA rather than silently ignored."""
    if device.type != "cuda":
        raise ConfigError(f"train.amp=true needs a CUDA device; this cell runs on {device.type!r} "
                          "(accepted: device=cuda, cuda:N, or auto on a machine with a GPU)")
    return AmpPlugin("cuda", torch.bfloat16)
