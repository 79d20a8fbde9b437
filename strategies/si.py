"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017)."""

from dataclasses import dataclass

from avalanche.training import SynapticIntelligence

from clbench.registry import register_strategy


@dataclass
class SIParams:
    si_lambda: float = 1.0
    eps: float = 0.1

    def __post_init__(self):
        if self.si_lambda < 0 or self.eps <= 0:
            raise ValueError("need si_lambda >= 0 and eps > 0")


@register_strategy(
    "si", description="Synaptic Intelligence: path-integral importance penalty", params=SIParams,
    defaults={
        # continual-learning-baselines experiments/permuted_mnist/synaptic_intelligence.py: lambda 10, eps 0.1
        "pmnist": {"si_lambda": 10.0}, "rotated_mnist": {"si_lambda": 10.0},
        # ... experiments/split_mnist/synaptic_intelligence.py: lambda 1
        "*": {"si_lambda": 1.0},
    },
)
def build(ctx):
    p = ctx.params
    return SynapticIntelligence(criterion=ctx.criterion(), si_lambda=p.si_lambda, eps=p.eps, **ctx.template_kwargs())
