"""Dark Experience Replay++ (Buzzega et al., NeurIPS 2020)."""

from dataclasses import dataclass

from avalanche.training import DER

from clbench.registry import register_strategy


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
    return DER(
        criterion=ctx.criterion(), mem_size=p.mem_size, batch_size_mem=p.batch_size_mem or ctx.train.train_mb_size,
        alpha=p.alpha, beta=p.beta, **ctx.template_kwargs(),
    )
