"""Naive fine-tuning: the lower bound every method must beat."""

from avalanche.training import Naive

from clbench.registry import register_strategy


@register_strategy("naive", description="Fine-tuning with no protection against forgetting (lower bound)")
def build(ctx):
    return Naive(criterion=ctx.criterion(), **ctx.template_kwargs())
