"""Gradient Episodic Memory (Lopez-Paz & Ranzato, NeurIPS 2017). Needs quadprog."""

from dataclasses import dataclass

from avalanche.training import GEM

from clbench.registry import register_strategy


@dataclass
class GEMParams:
    patterns_per_exp: int = 256  # 256 memories per task in the GEM paper
    memory_strength: float = 0.5  # gamma = 0.5 in the GEM paper

    def __post_init__(self):
        if self.patterns_per_exp < 1 or self.memory_strength < 0:
            raise ValueError("need patterns_per_exp >= 1 and memory_strength >= 0")


@register_strategy("gem", description="GEM: project gradients so past-task losses do not increase (QP)", params=GEMParams)
def build(ctx):
    p = ctx.params
    return GEM(
        criterion=ctx.criterion(), patterns_per_exp=p.patterns_per_exp, memory_strength=p.memory_strength,
        **ctx.template_kwargs(),
    )
