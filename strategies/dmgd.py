"""Naive fine-tuning trained by DMGD, the deep-momentum optimizer (NL Eq. 50; spec §8.6).

The optimizer-only Nested Learning variant: no replay, no penalty; the only NL ingredient is
an optimizer whose memory (the DMGD network φ and the momentum buffers) persists across
experiences (D12), which tests the paper's claim that optimizer memory management matters
for forgetting (§4.2). The choice of optimizer is a per-scenario default rather than
hard-wired, so the run config records `train.optimizer = "dmgd"` and `--set optimizer=sgd`
gives the matching ablation with the same strategy code.

Defaults: optimizer dmgd with its own defaults (objective "precond", μ = 0.9 because the
profiles' train.momentum is 0), lr 0.01 — with μ = 0.9 that is the effective step size
lr / (1 − μ) = 0.1 of the P-MNIST SGD protocol (lr 0.1, no momentum).
`reset_optimizer_state=true` resets the optimizer state, DMGD memory included, at every
experience boundary (Avalanche's `reset_optimizer_state` path): the "reset" ablation of D12.
"""

from dataclasses import dataclass

from avalanche.training import Naive

from clbench.registry import register_strategy


@dataclass
class DMGDStrategyParams:
    reset_optimizer_state: bool = False  # D12: False keeps optimizer memory across experiences


class OptimizerResetNaive(Naive):
    """Naive whose optimizer state is reset at every experience when asked to."""

    def __init__(self, *, reset_optimizer_state: bool = False, **kwargs):
        self.reset_every_experience = reset_optimizer_state
        super().__init__(**kwargs)

    def make_optimizer(self, reset_optimizer_state=False, **kwargs):
        reset = reset_optimizer_state or self.reset_every_experience
        super().make_optimizer(reset_optimizer_state=reset, **kwargs)


@register_strategy(
    "dmgd",
    description="Naive trained by DMGD (deep momentum, NL Eq. 50); optimizer memory kept across experiences",
    params=DMGDStrategyParams,
    defaults={"*": {"train.optimizer": "dmgd", "train.lr": 0.01}},
)
def build(ctx):
    return OptimizerResetNaive(
        criterion=ctx.criterion(), reset_optimizer_state=ctx.params.reset_optimizer_state, **ctx.template_kwargs()
    )
