"""Averaged GEM (Chaudhry et al., ICLR 2019)."""

from dataclasses import dataclass

from avalanche.training import AGEM

from clbench.registry import register_strategy


@dataclass
class AGEMParams:
    # continual-learning-baselines experiments/permuted_mnist/agem.py: 250 patterns, sample 256
    patterns_per_exp: int = 250
    sample_size: int = 256

    def __post_init__(self):
        if self.patterns_per_exp < 1 or self.sample_size < 1:
            raise ValueError("need patterns_per_exp >= 1 and sample_size >= 1")


@register_strategy("agem", description="A-GEM: project onto the average reference gradient of the memory", params=AGEMParams)
def build(ctx):
    p = ctx.params
    return AGEM(criterion=ctx.criterion(), patterns_per_exp=p.patterns_per_exp, sample_size=p.sample_size, **ctx.template_kwargs())
