"""CMS: fine-tuning a CMS model with multi-rate (Continuum Memory System) updates.

The ready-made form of `--strategy naive --set plugins=["cms_multirate"]` on a CMS model
(`--set model=cms_mlp` for the MNIST streams, `model=cms_resnet` for CIFAR). Its options are
those of the plugin (`--set strategy.periods=[1,8,64]`, ...; see docs/cms.md). Defaults:
3 levels with periods 1, 8, 64 iterations (each level updates several times per quick
experience of ~94-157 iterations, the slowest about twice), mean reduction, partial chunks
flushed at each experience end, optimizer state kept across experiences, non-CMS
parameters (stem, head, norms) in their own every-iteration group, and every level using
the run's optimizer at the run's lr. Nested CMS (`model.variant=nested`) re-initialises its
fast blocks at each experience start (plugin hook).

On a model without CMS blocks (the scenario's default `mlp` when no model is set) the same
multi-rate rule applies to its layers by depth (rule "auto" -> "depth"), with a warning: the
run is then "multi-rate MLP", not CMS, and its config says so (model and rule).
"""

import warnings

from avalanche.training import Naive

from clbench.errors import ConfigError
from clbench.nested.cms import find_chains
from clbench.nested.multirate import MultiRateParams, MultiRatePlugin
from clbench.registry import register_strategy


@register_strategy(
    "cms",
    params=MultiRateParams,
    # A CMS run needs a CMS model: the conv-stem variant for CIFAR images, the MLP one elsewhere.
    # The frozen-feature CIFAR stream is named explicitly: its input is already a 1280-d vector
    # (features="pooled"), so it takes the MLP stem, not the conv stem its image sibling needs.
    defaults={
        "split_cifar100": {"model": "cms_resnet"},
        "split_cifar100_til": {"model": "cms_resnet"},
        "split_cifar100_features": {"model": "cms_mlp"},
        "*": {"model": "cms_mlp"},
    },
    description="Continuum Memory System: CMS model, per-level update periods (Naive base)",
)
def build(ctx):
    if not find_chains(ctx.model) and ctx.params.rule == "auto":
        warnings.warn(
            f"strategy 'cms' on model {ctx.config.model!r}, which has no CMS blocks: its layers "
            "become the levels (rule 'depth'); use --set model=cms_mlp (MNIST) or "
            "model=cms_resnet (CIFAR) for CMS",
            stacklevel=2,
        )
    return multirate_naive(ctx, ctx.params, "cms")


def multirate_naive(ctx, params: MultiRateParams, strategy: str, plugins=()):
    """Naive whose optimizer is the multi-rate wrapper built from `params` (cms, hope)."""
    if any(isinstance(p, MultiRatePlugin) for p in ctx.extra_plugins):
        raise ConfigError(
            f"strategy {strategy!r} already applies the multi-rate updates: drop plugin "
            "'cms_multirate' and set its options as strategy.<option>"
        )
    plugin = MultiRatePlugin(params, ctx.config.train, ctx.config.optimizer_args)
    optimizer = plugin.bind(ctx.model)  # validates the level assignment now, before training
    kwargs = ctx.template_kwargs(plugins=[plugin, *plugins])
    kwargs["optimizer"] = optimizer
    return Naive(criterion=ctx.criterion(), **kwargs)
