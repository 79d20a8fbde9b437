"""The CMS row on the pretrained-feature track (split_cifar100_features, features="pooled":
x is a 1280-d MobileNetV2 vector, 100-way class-IL head) and its matched control, the
baselines' `mlp`."""

from __future__ import annotations

import pytest
import torch

from clbench.models import build_mlp, count_parameters
from clbench.nested.cms import build_cms_mlp, build_cms_resnet, build_mlp_matched
from clbench.registry import STRATEGIES
from clbench.resolve import _strategy_defaults
from clbench.scenarios.stream import ScenarioInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POOLED = ScenarioInfo("split_cifar100_features", "class_il", 10, 100, (1280,),
                      [list(range(10 * i, 10 * i + 10)) for i in range(10)],
                      extra={"features": {"backbone": "mobilenet_v2", "kind": "pooled", "n_tokens": 1, "dim": 1280}})

# quick cms_mlp on 1280 -> 100: stem 1280*128+128, three blocks of 2*128*256+256+128,
# a parameter-free block norm, final LayerNorm 2*128, head 128*100+100
CMS_QUICK = 1280 * 128 + 128 + 3 * (2 * 128 * 256 + 256 + 128) + 2 * 128 + 128 * 100 + 100
# quick mlp (2x256): 1280*256+256, 256*256+256, head 256*100+100
MLP_QUICK = 1280 * 256 + 256 + 256 * 256 + 256 + 256 * 100 + 100
# the recommended setting: cms_mlp width 138 (hidden 2*138) against the baselines' mlp 2x256
RECOMMENDED_CMS = {"width": 138}


def test_cms_mlp_reads_the_pooled_vector_directly():
    model = build_cms_mlp(POOLED, "quick")
    stem = model.features.stem[1]
    assert (stem.in_features, stem.out_features) == (1280, 128)
    x = torch.rand(5, 1280)
    assert model(x).shape == (5, 100)
    # flatten is the identity on [B, 1280]: the stem sees exactly the feature vector
    assert torch.equal(model.features.stem(x), stem(x))
    assert count_parameters(model) == CMS_QUICK == 374_884


def test_quick_defaults_are_not_matched_on_1280_d_features():
    """Why a setting must be chosen: at the quick defaults the baselines' mlp is 12% larger."""
    assert count_parameters(build_mlp(POOLED, "quick")) == MLP_QUICK == 419_428
    assert MLP_QUICK / CMS_QUICK > 1.10


def test_recommended_cms_width_matches_the_baseline_mlp():
    cms = count_parameters(build_cms_mlp(POOLED, "quick", **RECOMMENDED_CMS))
    mlp = count_parameters(build_mlp(POOLED, "quick"))
    assert abs(cms - mlp) / mlp < 0.05, (cms, mlp)
    assert cms == 420_724


def test_mlp_matched_control_on_features():
    """The alternative: keep cms_mlp at its quick default and run the size control
    mlp_matched (or mlp with hidden=232)."""
    cms = count_parameters(build_cms_mlp(POOLED, "quick"))
    matched = build_mlp_matched(POOLED, "quick")
    assert abs(count_parameters(matched) - cms) / cms < 0.05
    assert matched.features[1].out_features == 232
    assert abs(count_parameters(build_mlp(POOLED, "quick", hidden=232)) - cms) / cms < 0.05


def test_cms_strategy_defaults_to_the_mlp_stem_on_features():
    assert _strategy_defaults(STRATEGIES.get("cms"), "split_cifar100_features")["model"] == "cms_mlp"
    assert _strategy_defaults(STRATEGIES.get("cms"), "split_cifar100")["model"] == "cms_resnet"


def test_cms_resnet_on_features_is_one_clear_line():
    with pytest.raises(ValueError, match=r"^cms_resnet needs 32x32 RGB images .*'split_cifar100_features' has "
                                         r"input shape \(1280,\): use model cms_mlp for feature vectors$"):
        build_cms_resnet(POOLED, "smoke")
