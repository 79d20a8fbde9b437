"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017)."""

from dataclasses import dataclass

from avalanche.training import EWC

from clbench.registry import register_strategy


@dataclass
class EWCParams:
    ewc_lambda: float = 1.0

    def __post_init__(self):
        if self.ewc_lambda < 0:
            raise ValueError("ewc_lambda must be >= 0")


@register_strategy(
    "ewc", description="EWC: quadratic penalty weighted by the Fisher information of each past experience",
    params=EWCParams,
    defaults={
        # continual-learning-baselines experiments/permuted_mnist/ewc.py (ewc_lambda=1 at lr 1e-3)
        # does not protect anything at our lr 0.1 single-pass protocol; 100 is the value the
        # Avalanche EWC examples use for MNIST-sized MLPs. See docs/baselines.md.
        "pmnist": {"ewc_lambda": 100.0},
        "rotated_mnist": {"ewc_lambda": 100.0},
        "*": {"ewc_lambda": 100.0},
    },
)
def build(ctx):
    return EWC(criterion=ctx.criterion(), ewc_lambda=ctx.params.ewc_lambda, mode="separate", **ctx.template_kwargs())
