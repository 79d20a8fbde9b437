"""Cumulative: retrain on the union of all experiences seen so far."""

from avalanche.training import Cumulative

from clbench.registry import register_strategy


@register_strategy("cumulative", description="Trains on all data seen so far at each experience (costly upper reference)")
def build(ctx):
    return Cumulative(criterion=ctx.criterion(), **ctx.template_kwargs())
