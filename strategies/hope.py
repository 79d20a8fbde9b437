"""HOPE: self-modifying Titans + CMS (Behrouz et al., NeurIPS 2025), on patch or token sequences.

Fine-tuning (Naive base) of the `hope` model with AdamW (the paper's outer optimizer), its
CMS levels updated at their own periods by the multi-rate wrapper (reading R2 of the CMS
time axis: training iterations of the stream; docs/hope.md). The inner loop (the fast
memories) runs inside every forward pass. Options are those of the multi-rate plugin
(`strategy.periods=[1,16,256]`, ...) plus `strategy.cms=false`, the "w/o CMS" ablation: the
same network with every level updated at every step (periods all 1, which is exactly the
plain optimizer step). The optimizer state is kept across experiences (D12, `keep_state`).

Fast-state resets (D4, `model.reset`): per example (default) needs nothing; per experience
is this plugin's `before_training_exp`; "never" carries the states across everything.
Evaluation never writes the carried state (D3, the layer only updates it in train mode).
"""

from dataclasses import dataclass, field

from avalanche.training.plugins import SupervisedPlugin

from clbench.errors import ConfigError
from clbench.nested.hope.model import find_hope_features
from clbench.nested.multirate import MultiRateParams
from clbench.registry import register_strategy
from clbench.strategies.cms import multirate_naive


@dataclass
class HopeParams(MultiRateParams):
    # §8.9 Design B periods for the CMS levels; quick experiences are ~150 iterations long.
    periods: list[int] = field(default_factory=lambda: [1, 16, 128])
    cms: bool = True  # False: "w/o CMS" (every level at every step)


class FastStateResetPlugin(SupervisedPlugin):
    """Returns HOPE's fast memories to their meta-learned initial states at each experience start."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def before_training_exp(self, strategy, **kwargs):
        if any(layer.reset_policy == "experience" for layer in self.features.titans_layers()):
            self.features.reset_fast_state()


@register_strategy(
    "hope",
    params=HopeParams,
    defaults={"*": {"model": "hope", "train.optimizer": "adamw", "train.lr": 0.001}},
    description="HOPE: self-modifying Titans + CMS sequence model (patches/tokens), multi-rate CMS levels",
)
def build(ctx):
    features = find_hope_features(ctx.model)
    if features is None or not features.titans_layers():
        raise ConfigError(
            f"strategy 'hope' needs a model with self-modifying Titans layers (model 'hope'), "
            f"got model {ctx.config.model!r}; run hope_attention or transformer_matched with strategy 'cms' or 'naive'"
        )
    params = ctx.params
    if not params.cms:
        params = HopeParams(**{**vars(params), "periods": [1] * len(params.periods), "cms": False})
    return multirate_naive(ctx, params, "hope", plugins=[FastStateResetPlugin(features)])
