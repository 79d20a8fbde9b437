"""Built-in optimizers, registered by name like strategies.

A factory receives the parameters to optimize, the run's TrainConfig (lr,
momentum, weight decay) and its own validated options, and returns a
torch.optim.Optimizer. Deep optimizers (DMGD, M3, ...) register the same way,
so `--set optimizer=<name>` works with every strategy.
"""

from __future__ import annotations

import torch

from clbench.registry import register_optimizer


@register_optimizer("sgd", description="SGD with optional momentum and weight decay")
def sgd(params, train, options):
    return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


@register_optimizer("adam", description="Adam (weight decay as L2 in the gradient)")
def adam(params, train, options):
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)


@register_optimizer("adamw", description="AdamW (decoupled weight decay)")
def adamw(params, train, options):
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
