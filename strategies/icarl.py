"""iCaRL (Rebuffi et al., CVPR 2017): herding exemplars and a nearest-mean-of-exemplars classifier.

Class-IL only: its nearest-mean classifier has no notion of task heads, and a
shared domain-IL label space makes its per-class exemplar sets meaningless.
"""

from dataclasses import dataclass

from avalanche.training import ICaRL

from clbench.registry import register_strategy


@dataclass
class ICaRLParams:
    memory_size: int = 2000  # K = 2000 in Rebuffi et al. 2017
    fixed_memory: bool = True

    def __post_init__(self):
        if self.memory_size < 1:
            raise ValueError("memory_size must be >= 1")


@register_strategy(
    "icarl", description="iCaRL: herding exemplars + nearest-mean-of-exemplars classifier (class-IL only)",
    supports=("class_il",), params=ICaRLParams,
)
def build(ctx):
    p = ctx.params
    kwargs = ctx.template_kwargs(with_model=False)
    return ICaRL(
        feature_extractor=ctx.model.features, classifier=ctx.model.classifier, memory_size=p.memory_size,
        buffer_transform=None, fixed_memory=p.fixed_memory, **kwargs,
    )
