"""Models and one plugin that the published anchors need and the main registry lacks.

The continual-learning-baselines protocols (ContinualAI, commit 4900462) use a
few components clbench does not otherwise ship:

* `mlp_tanh`: their `models.MLP(relu_act=False)`, used by Split MNIST LwF. Same
  layout as `mlp` (Linear + activation per hidden layer, default PyTorch init)
  with Tanh instead of ReLU.
* `resnet32`: Avalanche's FACIL-style ResNet-32 (`avalanche.models.resnet32`),
  used by Split CIFAR-100 Replay.
* `icarl_resnet32`: Avalanche's `make_icarl_net` + `initialize_icarl_net`, used
  by Split CIFAR-100 iCaRL.
* plugin `ce_decay`: the `LwFCEPenalty` wrapper of experiments/split_mnist/lwf.py,
  which multiplies the cross-entropy by 1/(experiences seen so far) before LwF
  adds its distillation term (van de Ven et al. 2018).

All models keep the `features` / `classifier` split of `clbench.models`, so that
iCaRL and task-IL heads work on them. Importing this module registers them.
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin
from avalanche.models import initialize_icarl_net, make_icarl_net
from avalanche.models.resnet32 import resnet32
from torch import nn

from clbench.models import FeatureClassifier, mlp_features, with_head
from clbench.registry import register_model, register_plugin


def _flat_size(info) -> int:
    size = 1
    for d in info.input_shape:
        size *= d
    return size


@register_model(
    "mlp_tanh",
    description="MLP with Tanh activations (continual-learning-baselines "
    "MLP(relu_act=False)); multi-head for task-IL",
)
def build_mlp_tanh(info, profile: str, hidden: int = 200, layers: int = 1) -> nn.Module:
    if hidden < 1 or layers < 1:
        raise ValueError(f"mlp_tanh needs hidden >= 1 and layers >= 1, got {hidden}, {layers}")
    features = mlp_features(_flat_size(info), hidden, layers)
    # Same modules as `mlp`, activations swapped: keeps parameter order and init identical.
    for i, module in enumerate(features):
        if isinstance(module, nn.ReLU):
            features[i] = nn.Tanh()
    return with_head(features, hidden, info)


class _ResNet32Features(nn.Module):
    """avalanche.models.resnet32 up to its average pool (the `fc` head removed)."""

    def __init__(self):
        super().__init__()
        self.net = resnet32(num_classes=1)
        self.out_features = self.net.fc.in_features
        del self.net.fc

    def forward(self, x):
        return self.net.forward_rep(x)


@register_model(
    "resnet32",
    description="Avalanche's FACIL-style ResNet-32 (64-d features) "
    "for 32x32 RGB; multi-head for task-IL",
)
def build_resnet32(info, profile: str) -> nn.Module:
    features = _ResNet32Features()
    return with_head(features, features.out_features, info)


@register_model(
    "icarl_resnet32",
    description="Avalanche's iCaRL ResNet-32 (make_icarl_net, kaiming init); single head",
)
def build_icarl_resnet32(info, profile: str) -> nn.Module:
    net = make_icarl_net(num_classes=info.n_classes)
    net.apply(initialize_icarl_net)
    return FeatureClassifier(net.feature_extractor, net.classifier)


class CEDecayPlugin(SupervisedPlugin):
    """loss *= 1 / (experiences trained so far, this one included).

    It must run before LwF's own plugin adds the distillation term: Avalanche's
    LwF appends its plugin after the ones it is given, so an extra plugin
    (`plugins = ["ce_decay"]`) sees the plain cross-entropy here.
    """

    def before_backward(self, strategy, **kwargs):
        strategy.loss = strategy.loss / float(strategy.clock.train_exp_counter + 1)


@register_plugin(
    "ce_decay",
    description="scale the cross-entropy by 1/(experiences so far), "
    "as continual-learning-baselines' LwFCEPenalty",
)
def build_ce_decay(info, config, params) -> SupervisedPlugin:
    return CEDecayPlugin()
