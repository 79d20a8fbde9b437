"""Dark Experience Replay++ (Buzzega et al., NeurIPS 2020)."""

from dataclasses import dataclass

import torch
from avalanche.training import DER
from avalanche.training.templates import SupervisedTemplate

from clbench.registry import register_strategy


class BufferFirstDER(DER):
    """Avalanche's DER with the replayed rows joined to the minibatch *before* the
    plugins' `before_forward` runs (Avalanche's DER joins them after).

    So a `before_forward` plugin sees every row the model will see: `crop_flip`
    augments the replayed samples as well, as Mammoth's DER++ does (it draws buffer
    samples through the training transform). With no such plugin nothing changes.
    """

    def _before_forward(self, **kwargs):
        if self.replay_loader is not None:
            batch = [t.to(self.device) for t in next(self.replay_loader)]
            batch_x, batch_y, batch_tid, self.batch_logits = batch
            self.mbatch[0] = torch.cat((batch_x, self.mbatch[0]))
            self.mbatch[1] = torch.cat((batch_y, self.mbatch[1]))
            self.mbatch[2] = torch.cat((batch_tid, self.mbatch[2]))
        SupervisedTemplate._before_forward(self, **kwargs)  # the plugins' callbacks


@dataclass
class DERParams:
    mem_size: int = 500
    batch_size_mem: int | None = None  # default: the training minibatch size
    alpha: float = 0.1  # logit-matching weight (Avalanche default)
    beta: float = 0.5  # label weight of DER++ (Avalanche default)

    def __post_init__(self):
        if self.mem_size < 1 or self.alpha < 0 or self.beta < 0:
            raise ValueError("need mem_size >= 1, alpha >= 0, beta >= 0")


# Avalanche's DER calls the model without task labels, so multi-head (task-IL) models fail.
@register_strategy(
    "der", description="DER++: replay stored logits (and labels) of past samples",
    supports=("class_il", "domain_il"), params=DERParams,
)
def build(ctx):
    p = ctx.params
    return BufferFirstDER(
        criterion=ctx.criterion(), mem_size=p.mem_size, batch_size_mem=p.batch_size_mem or ctx.train.train_mb_size,
        alpha=p.alpha, beta=p.beta, **ctx.template_kwargs(),
    )
