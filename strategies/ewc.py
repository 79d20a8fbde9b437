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


# Published value first: continual-learning-baselines experiments/permuted_mnist/ewc.py uses
# ewc_lambda=1. Under our single-pass SGD lr 0.1 protocol any lambda >= 100 diverges (NaN loss
# on held-out seed 100), so P-MNIST keeps 1. For the Adam-trained split streams lambda was
# picked on held-out seed 100 (not a reported seed) from {1, 1e2, 1e3, 1e4} on split_mnist_til:
# ACC 0.950 / 0.962 / 0.941 / 0.981. See docs/baselines.md.
EWC_DEFAULTS = {
    "pmnist": {"ewc_lambda": 1.0},
    "rotated_mnist": {"ewc_lambda": 1.0},
    "*": {"ewc_lambda": 10000.0},
}


@register_strategy(
    "ewc", description="EWC: quadratic penalty weighted by the Fisher information of each past experience",
    params=EWCParams,
    defaults=EWC_DEFAULTS,
)
def build(ctx):
    return EWC(criterion=ctx.criterion(), ewc_lambda=ctx.params.ewc_lambda, mode="separate", **ctx.template_kwargs())
