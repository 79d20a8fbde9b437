"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017).

Avalanche 0.6's SI is a no-op on CPU: `SynapticIntelligencePlugin.extract_weights`
stores `param.detach().cpu().flatten()`, which on CPU is a *view* of the live
parameter, not a copy. The "old" weights then move with the optimizer step, so
the path integral (new - old) * grad is always 0, and so are the importances
and the penalty. On CUDA `.cpu()` happens to copy, which is why the bug hides
there. The plugin calls the helper by class name (not through `self`), so a
subclass cannot override it; we replace that one static method with a copying
version. `tests/test_si_fix.py` shows stock SI equal to Naive on CPU and the
fixed one not.
"""

from dataclasses import dataclass

import torch
from avalanche.training import SynapticIntelligence
from avalanche.training.plugins.synaptic_intelligence import SynapticIntelligencePlugin

from clbench.registry import register_strategy

_stock_extract_weights = SynapticIntelligencePlugin.extract_weights


@torch.no_grad()
def extract_weights_copy(model, target, excluded_parameters):
    """Avalanche's extract_weights, but storing a copy of each parameter."""
    for name, param in SynapticIntelligencePlugin.allowed_parameters(model, excluded_parameters):
        target[name].data = param.detach().cpu().flatten().clone()


def install_si_fix(enabled: bool = True) -> None:
    SynapticIntelligencePlugin.extract_weights = staticmethod(extract_weights_copy if enabled else _stock_extract_weights)


@dataclass
class SIParams:
    si_lambda: float = 1.0
    eps: float = 0.1

    def __post_init__(self):
        if self.si_lambda < 0 or self.eps <= 0:
            raise ValueError("need si_lambda >= 0 and eps > 0")


@register_strategy(
    "si", description="Synaptic Intelligence: path-integral importance penalty (Avalanche's, CPU aliasing bug fixed)",
    params=SIParams,
    defaults={
        # continual-learning-baselines experiments/permuted_mnist/synaptic_intelligence.py: lambda 10, eps 0.1
        "pmnist": {"si_lambda": 10.0}, "rotated_mnist": {"si_lambda": 10.0},
        # ... experiments/split_mnist/synaptic_intelligence.py: lambda 1
        "*": {"si_lambda": 1.0},
    },
)
def build(ctx):
    install_si_fix()
    p = ctx.params
    return SynapticIntelligence(criterion=ctx.criterion(), si_lambda=p.si_lambda, eps=p.eps, **ctx.template_kwargs())
