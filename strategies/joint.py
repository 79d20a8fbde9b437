"""Joint training on the union of all experiences: the upper bound.

Avalanche's JointTraining is trained once on the whole stream; the runner
detects it and fills every row of the matrix with that single evaluation, so
its forgetting and BWT are 0 by construction and its ACC is the reference for
intransigence.
"""

from avalanche.training import JointTraining

from clbench.registry import register_strategy


@register_strategy("joint", description="Joint (i.i.d.) training on all experiences at once (upper bound)")
def build(ctx):
    return JointTraining(criterion=ctx.criterion(), **ctx.template_kwargs())
