"""Deep optimizers of Nested Learning (spec §4), registered as clbench optimizers.

`--set optimizer=<name>` uses them with any strategy; `--set optim.<field>=...` sets the
fields of the params dataclass. The classes are plain torch.optim.Optimizers and work outside
clbench too. The run's TrainConfig gives lr and weight_decay; train.momentum is used only
where an optimizer's own `momentum` option is None (then: train.momentum if > 0, else 0.9,
because the P-MNIST profiles run plain SGD with momentum 0, which would switch the memory off).
docs/deep_optimizers.md describes every equation and decision.
"""

from __future__ import annotations

import dataclasses

from clbench.nested.optim.delta_momentum import DeltaMomentum, DeltaMomentumParams
from clbench.nested.optim.dgd import DGD, DGDParams, dgd_linear_update
from clbench.nested.optim.dmgd import DMGD, DMGDParams
from clbench.nested.optim.m3 import M3, M3Params
from clbench.nested.optim.newton_schulz import newton_schulz
from clbench.registry import register_optimizer

__all__ = [
    "DGD", "DMGD", "M3", "DGDParams", "DMGDParams", "DeltaMomentum", "DeltaMomentumParams", "M3Params",
    "dgd_linear_update", "newton_schulz",
]

DEFAULT_MOMENTUM = 0.9


def resolve_momentum(option: float | None, train) -> float:
    if option is not None:
        return option
    return train.momentum if train.momentum > 0 else DEFAULT_MOMENTUM


@register_optimizer(
    "delta_momentum", params=DeltaMomentumParams,
    description="Delta momentum (NL Eq. 48-49): momentum with a gradient-dependent delta-rule decay",
)
def delta_momentum(params, train, options):
    o = options or DeltaMomentumParams()
    return DeltaMomentum(params, lr=train.lr, momentum=resolve_momentum(o.momentum, train), delta=o.delta,
                         form=o.form, weight_decay=train.weight_decay)


@register_optimizer(
    "dmgd", params=DMGDParams,
    description="Deep Momentum GD (NL Eq. 50): momentum through a learned MLP memory over gradient tokens",
)
def dmgd(params, train, options):
    o = dataclasses.asdict(options or DMGDParams())
    o["momentum"] = resolve_momentum(o["momentum"], train)
    return DMGD(params, lr=train.lr, weight_decay=train.weight_decay, **o)


@register_optimizer(
    "m3", params=M3Params,
    description="Multi-scale Momentum Muon (NL Alg. 1): fast + slow Newton-Schulz momenta; 1-D params AdamW",
)
def m3(params, train, options):
    o = options or M3Params()
    return M3(params, lr=train.lr, weight_decay=train.weight_decay, **dataclasses.asdict(o))


@register_optimizer(
    "dgd", params=DGDParams,
    description="Delta GD (NL Eq. 57): closed-form L2 step with input decay on nn.Linear; SGD elsewhere",
)
def dgd(params, train, options):
    o = options or DGDParams()
    return DGD(params, lr=train.lr, weight_decay=train.weight_decay, input_decay=o.input_decay,
               normalize_inputs=o.normalize_inputs, max_rows=o.max_rows)
