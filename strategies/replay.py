"""Experience replay with an experience-balanced buffer (Avalanche's Replay)."""

from dataclasses import dataclass

from avalanche.training import Replay

from clbench.registry import register_strategy


@dataclass
class ReplayParams:
    mem_size: int = 500  # the 500-sample buffer of Buzzega et al. (DER, NeurIPS 2020)

    def __post_init__(self):
        if self.mem_size < 1:
            raise ValueError("mem_size must be >= 1")


@register_strategy("replay", description="Experience replay: rehearse a balanced buffer of past samples", params=ReplayParams)
def build(ctx):
    return Replay(criterion=ctx.criterion(), mem_size=ctx.params.mem_size, **ctx.template_kwargs())
