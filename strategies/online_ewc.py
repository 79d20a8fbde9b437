"""Online EWC (Schwarz et al., "Progress & Compress", ICML 2018): one running,
decayed Fisher instead of one penalty per experience."""

from dataclasses import dataclass

from clbench.registry import register_strategy
from clbench.strategies.ewc import EWC_DEFAULTS, ewc_template


@dataclass
class OnlineEWCParams:
    ewc_lambda: float = 100.0
    decay_factor: float = 0.9  # gamma < 1 in Schwarz et al. 2018

    def __post_init__(self):
        if self.ewc_lambda < 0 or not 0 <= self.decay_factor <= 1:
            raise ValueError("need ewc_lambda >= 0 and 0 <= decay_factor <= 1")


@register_strategy(
    "online_ewc", description="Online EWC: a single running Fisher penalty with decay",
    params=OnlineEWCParams, defaults=EWC_DEFAULTS,  # same lambdas as EWC, same reasons
)
def build(ctx):
    p = ctx.params
    return ewc_template(ctx, ewc_lambda=p.ewc_lambda, mode="online", decay_factor=p.decay_factor, keep_importance_data=False)
