"""Memory Aware Synapses (Aljundi et al., ECCV 2018)."""

from dataclasses import dataclass

from avalanche.training import MAS

from clbench.registry import register_strategy


@dataclass
class MASParams:
    lambda_reg: float = 1.0  # Aljundi et al. 2018, lambda = 1
    alpha: float = 0.5  # Avalanche default: running-average weight of the importance

    def __post_init__(self):
        if self.lambda_reg < 0 or not 0 <= self.alpha <= 1:
            raise ValueError("need lambda_reg >= 0 and 0 <= alpha <= 1")


@register_strategy("mas", description="MAS: importance from the sensitivity of the output norm", params=MASParams)
def build(ctx):
    p = ctx.params
    return MAS(criterion=ctx.criterion(), lambda_reg=p.lambda_reg, alpha=p.alpha, **ctx.template_kwargs())
