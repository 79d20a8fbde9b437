"""GDumb (Prabhu et al., ECCV 2020): greedy class-balanced memory, retrain from scratch."""

from dataclasses import dataclass

from avalanche.training import GDumb

from clbench.registry import register_strategy


@dataclass
class GDumbParams:
    mem_size: int = 4400  # continual-learning-baselines experiments/split_mnist/gdumb.py

    def __post_init__(self):
        if self.mem_size < 1:
            raise ValueError("mem_size must be >= 1")


@register_strategy("gdumb", description="GDumb: keep a class-balanced memory and retrain on it from scratch", params=GDumbParams)
def build(ctx):
    return GDumb(criterion=ctx.criterion(), mem_size=ctx.params.mem_size, **ctx.template_kwargs())
