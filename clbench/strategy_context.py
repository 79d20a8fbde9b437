"""What a strategy factory receives, and the pieces every strategy shares.

A factory is `build(ctx: StrategyContext) -> SupervisedTemplate`. It reads the
model, the scenario's metadata (`ctx.info`), the resolved config and its own
validated hyper-parameters (`ctx.params`), and passes `ctx.template_kwargs()`
to an Avalanche template so that every strategy gets the same optimizer,
minibatch sizes, device, evaluator and safety plugins.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from clbench.config import RunConfig
from clbench.errors import NonFiniteLossError
from clbench.registry import OPTIMIZERS


class NonFiniteLossGuard(SupervisedPlugin):
    """Stops training with a clear error as soon as the loss is NaN or infinite.

    Without it a diverged run keeps training on garbage and its accuracy
    matrix looks like a (bad) result instead of a failure.
    """

    def before_backward(self, strategy, **kwargs):
        loss = strategy.loss
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            clock = strategy.clock
            raise NonFiniteLossError(
                f"loss is {loss.detach().float().item()} at experience {clock.train_exp_counter}, "
                f"epoch {clock.train_exp_epochs}, iteration {clock.train_epoch_iterations}"
            )


def make_optimizer(params, config: RunConfig) -> torch.optim.Optimizer:
    spec = OPTIMIZERS.get(config.train.optimizer)
    options = spec.params(**config.optimizer_args) if spec.params else None
    return spec.factory(params, config.train, options)


def silent_evaluator() -> EvaluationPlugin:
    """An evaluator with no metrics and no loggers.

    clbench computes the accuracy matrix itself over cached test tensors, so
    Avalanche's metric objects would only cost time (and print).
    """
    with warnings.catch_warnings():  # "No loggers specified": intended, we log nothing
        warnings.simplefilter("ignore", UserWarning)
        return EvaluationPlugin(loggers=[])


@dataclass
class StrategyContext:
    model: nn.Module
    info: Any  # clbench.scenarios.stream.ScenarioInfo
    config: RunConfig
    params: Any  # the strategy's params dataclass instance (or None)
    device: torch.device
    extra_plugins: list  # plugins named in config.plugins, already built

    @property
    def train(self):
        return self.config.train

    def optimizer(self, params=None) -> torch.optim.Optimizer:
        return make_optimizer(self.model.parameters() if params is None else params, self.config)

    def template_kwargs(self, *, plugins: list | None = None, with_model: bool = True) -> dict[str, Any]:
        """Keyword arguments shared by all Avalanche templates (all passed explicitly:
        Avalanche's defaults are train_mb_size=1 and device='cpu', §0.9)."""
        t = self.config.train
        amp = []
        if t.amp:
            from clbench.cifar_train import amp_plugin

            amp = [amp_plugin(self.device)]
        kwargs: dict[str, Any] = dict(
            optimizer=self.optimizer(),
            train_mb_size=t.train_mb_size,
            train_epochs=t.epochs,
            eval_mb_size=t.eval_mb_size,
            device=self.device,
            plugins=[NonFiniteLossGuard(), *self.extra_plugins, *(plugins or []), *amp],
            evaluator=silent_evaluator(),
        )
        if with_model:
            kwargs["model"] = self.model
        return kwargs

    def criterion(self) -> nn.Module:
        return NextTokenLoss() if self.info.metric_name == "bpc" else nn.CrossEntropyLoss()


class NextTokenLoss(nn.CrossEntropyLoss):
    """Cross-entropy over every position of a language-modelling minibatch.

    The model returns logits [B, L, V] and the targets are next-token ids [B, L]; the
    mean over all B*L positions, in nats (the "bpc" metric divides by ln 2).
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.flatten(0, -2), targets.flatten())

