"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017)."""

from dataclasses import dataclass, field

from avalanche.training import LwF

from clbench.registry import register_strategy


@dataclass
class LwFParams:
    # One alpha for all experiences, or one per experience.
    alpha: list[float] = field(default_factory=lambda: [1.0])
    temperature: float = 2.0
    # Multiplies every alpha: the one scalar `clbench tune` searches, so a per-experience
    # schedule (split_mnist's) keeps its shape while its strength is tuned.
    alpha_scale: float = 1.0

    def __post_init__(self):
        if not self.alpha or any(a < 0 for a in self.alpha) or self.temperature <= 0 or self.alpha_scale < 0:
            raise ValueError("need a non-empty alpha list of values >= 0, temperature > 0 and alpha_scale >= 0")


@register_strategy(
    "lwf", description="LwF: distillation of the previous model's outputs on new data", params=LwFParams,
    defaults={
        # continual-learning-baselines experiments/split_mnist/lwf.py: alpha per experience, T=2
        "split_mnist": {"alpha": [0.0, 0.5, 1.33, 2.25, 3.2]},
        "split_fmnist": {"alpha": [0.0, 0.5, 1.33, 2.25, 3.2]},
        # Li & Hoiem: lambda_o = 1, T = 2
        "*": {"alpha": [1.0]},
    },
)
def build(ctx):
    p = ctx.params
    alphas = [a * p.alpha_scale for a in p.alpha]
    alpha = alphas[0] if len(alphas) == 1 else alphas
    return LwF(criterion=ctx.criterion(), alpha=alpha, temperature=p.temperature, **ctx.template_kwargs())
