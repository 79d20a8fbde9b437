"""Shared machinery of the closed-form strategies (`ncm`, `ranpac`): no gradient training.

A closed-form method learns by accumulating sufficient statistics of the
(frozen) input features, class sums for NCM, a Gram matrix for RanPAC, and
derives its classifier from them. It fits Avalanche as a `SupervisedTemplate`
subclass, not as a new loop: Avalanche still runs dataset adaptation, the
plugin callbacks and the experience bookkeeping; only three steps differ.

- `training_epoch` is one pass under `no_grad` that feeds each minibatch to the
  head's `accumulate` (no forward, loss, backward or optimizer step).
- `make_train_dataloader` goes through the experience in order (no shuffle):
  the statistics are sums, so order cannot matter beyond rounding, and a fixed
  order lets RanPAC hold out a seeded subset by position.
- `_after_training_exp` calls the head's `finalise` (e.g. RanPAC's ridge
  solve) before the plugins' `after_training_exp`, so they see the final model.

The head (`ClosedFormHead`) is the template's model, so the runner evaluates
it, and counts its parameters: 0, because everything it holds is a buffer.
It reads the input itself, flattened: on a frozen-feature stream
(`split_cifar100_features`) x is the backbone's feature vector. The
model built from the config (`ctx.model`) is not used.
"""

from __future__ import annotations

import warnings

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from clbench import fastdata


class ClosedFormHead(nn.Module):
    """A classifier over flattened inputs whose whole state is buffers (no parameters).

    Subclasses implement `accumulate(z, y)` (z: float64 [B, d]), `scores(z)` and
    optionally `finalise()`. Classes never seen in training get score -inf: the
    head can only predict classes it has statistics for (class-IL heads of the
    papers grow with the classes seen so far).
    """

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        self.in_features, self.n_classes = in_features, n_classes
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))
        self.experiences_done = 0  # finalised experiences; seeds RanPAC's hold-out split

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        if z.shape[1] != self.in_features:
            raise ValueError(f"input has {z.shape[1]} features per sample, the head was built for {self.in_features}")
        # float64: the statistics are long sums, and the tests compare them with numpy's
        return z.double()

    def begin_experience(self, n_samples: int) -> None:
        """Called once before the pass over an experience of `n_samples` samples."""

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.seen[y] = True
        self.accumulate(self.embed(x), y)

    def accumulate(self, z: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def finalise(self) -> None:
        """Turn the statistics into the classifier (called once per experience)."""

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.seen.any()):
            # No statistics yet, so no prediction: the runner stores the untrained row as NaN.
            raise RuntimeError(f"{type(self).__name__} has seen no class yet and cannot predict")
        out = self.scores(self.embed(x))
        return out.masked_fill(~self.seen, float("-inf")).float()


class ClosedFormTemplate(SupervisedTemplate):
    """One statistics pass per experience, then `model.finalise()`; see the module docstring."""

    def __init__(self, *, model: ClosedFormHead, train_epochs: int = 1, **base_kwargs):
        if train_epochs != 1:
            # A second pass would add every sample's statistics twice: one pass is the method.
            warnings.warn(f"{type(model).__name__}: closed-form statistics take one pass; "
                          f"train_epochs={train_epochs} runs as 1", UserWarning, stacklevel=2)
        super().__init__(model=model, train_epochs=1, **base_kwargs)

    def make_train_dataloader(self, **kwargs):
        dataset, batch_size = self.adapted_dataset, self.train_mb_size

        class Sequential:  # re-iterable; one in-order pass (fastdata gathers whole minibatches)
            def __iter__(self):
                return iter(fastdata.sequential_batches(dataset, batch_size))

        self.dataloader = Sequential()

    def make_optimizer(self, **kwargs):
        """Nothing is trained: the head has no parameters, the optimizer is never stepped."""

    def training_epoch(self, **kwargs):
        self.model.begin_experience(len(self.adapted_dataset))
        for mbatch in self.dataloader:
            self.mbatch = mbatch
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            with torch.no_grad():
                self.model.observe(self.mb_x, self.mb_y)
            self._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs):
        with torch.no_grad():
            self.model.finalise()
        self.model.experiences_done += 1
        super()._after_training_exp(**kwargs)


def closed_form_template(ctx, head: ClosedFormHead) -> ClosedFormTemplate:
    """The template for `head` with the run's shared settings (minibatch sizes, device, plugins).

    `template_kwargs` also builds an optimizer over `ctx.model`: Avalanche's
    constructor wants one, and it is never stepped (see `make_optimizer`).
    """
    if ctx.info.scenario_type == "task_il":  # resolve_config refuses this first; direct callers get it here
        raise ValueError("closed-form strategies support class_il and domain_il scenarios, not task_il")
    return ClosedFormTemplate(model=head, criterion=nn.CrossEntropyLoss(), **ctx.template_kwargs(with_model=False))
