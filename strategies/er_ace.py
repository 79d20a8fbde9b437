"""ER-ACE: experience replay with asymmetric cross-entropy (Caccia et al., ICLR 2022)."""

from dataclasses import dataclass

from avalanche.training import ER_ACE

from clbench.registry import register_strategy


@dataclass
class ERACEParams:
    mem_size: int = 500
    batch_size_mem: int = 10  # continual-learning-baselines online ER-ACE

    def __post_init__(self):
        if self.mem_size < 1 or self.batch_size_mem < 1:
            raise ValueError("need mem_size >= 1 and batch_size_mem >= 1")


@register_strategy("er_ace", description="ER-ACE: replay with the asymmetric cross-entropy on incoming classes", params=ERACEParams)
def build(ctx):
    p = ctx.params
    return ER_ACE(criterion=ctx.criterion(), mem_size=p.mem_size, batch_size_mem=p.batch_size_mem, **ctx.template_kwargs())
