"""The from-scratch Split CIFAR-100 track: models, augmentation, LR schedule, AMP, profiles."""

from __future__ import annotations

import pytest
import torch

from clbench.cifar_train import AmpPlugin, CropFlipParams, CropFlipPlugin, amp_plugin, crop_flip
from clbench.config import RunConfig
from clbench.errors import ConfigError
from clbench.models import count_parameters
from clbench.registry import MODELS, PLUGINS
from clbench.resolve import resolve_config
from clbench.scenarios.cifar100 import MEAN, STD
from clbench.scenarios.stream import ScenarioInfo

INFO = ScenarioInfo("split_cifar100", "class_il", 10, 100, (3, 32, 32), [list(range(i * 10, i * 10 + 10)) for i in range(10)])
BLACK = ((0.0 - MEAN) / STD).flatten()


def test_resnet18_is_mammoths_size_and_shape():
    model = MODELS.get("resnet18").factory(INFO, "full")
    # Mammoth's resnet18(nf=64) with a 100-way head: 11,220,132 parameters.
    assert count_parameters(model) == 11_220_132
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_conv4_output_and_size():
    model = MODELS.get("conv4").factory(INFO, "quick")
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 100)
    assert count_parameters(model) < 200_000


def test_crop_flip_without_shift_or_flip_is_identity():
    x = torch.randn(5, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(crop_flip(x, 0, BLACK, g, flip=False), x)


def test_crop_flip_equals_padding_the_raw_image_then_normalising():
    raw = torch.randint(0, 256, (6, 3, 32, 32)).float() / 255
    norm = (raw - MEAN) / STD
    out = crop_flip(norm, 4, BLACK, torch.Generator().manual_seed(3))
    # Redo each crop by hand on the raw image, zero-padded as torchvision does.
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 9, (6,), generator=g), torch.randint(0, 9, (6,), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    for i in range(6):
        ref = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        ref = ref.flip(2) if flips[i] else ref
        assert torch.allclose(out[i], (ref - MEAN[0]) / STD[0], atol=1e-6)
    assert out.shape == norm.shape and out.dtype == norm.dtype


def test_crop_flip_is_deterministic_given_the_seed_and_varies_across_batches():
    x = torch.randn(8, 3, 32, 32)
    a = crop_flip(x, 4, BLACK, torch.Generator().manual_seed(1))
    b = crop_flip(x, 4, BLACK, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(1)
    assert not torch.equal(crop_flip(x, 4, BLACK, g), crop_flip(x, 4, BLACK, g))


class _Strategy:
    def __init__(self, x):
        self.mbatch = [x, torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long)]


def test_crop_flip_plugin_augments_training_minibatches_only():
    plugin = CropFlipPlugin(BLACK, CropFlipParams(), seed=0)
    x = torch.randn(16, 3, 32, 32)
    s = _Strategy(x.clone())
    plugin.before_forward(s)
    assert s.mbatch[0].shape == x.shape and not torch.equal(s.mbatch[0], x)
    # The plugin has no evaluation hook that touches inputs: test images stay as they are.
    for hook in ("before_eval_forward", "before_eval_iteration", "before_eval_exp"):
        assert getattr(type(plugin), hook) is getattr(type(plugin).__mro__[1], hook)


def test_crop_flip_refuses_non_cifar_streams():
    spec = PLUGINS.get("crop_flip")
    info = ScenarioInfo("pmnist", "domain_il", 3, 10, (784,), [list(range(10))] * 3)
    with pytest.raises(ConfigError, match="'pmnist'.*accepted: split_cifar100"):
        spec.factory(info, RunConfig("pmnist", "naive"), CropFlipParams())


def test_full_profile_is_mammoths_seq_cifar100():
    cfg = resolve_config("split_cifar100", "der", profile="full")
    t = cfg.train
    assert (cfg.model, t.epochs, t.train_mb_size, t.lr, t.momentum, t.amp) == ("resnet18", 50, 32, 0.1, 0.0, False)
    assert cfg.plugins == ["crop_flip", "multistep_lr"] and cfg.scenario_args["n_experiences"] == 10


def test_amp_is_refused_off_cuda_and_off_by_default():
    assert resolve_config("split_cifar100", "naive", profile="smoke").train.amp is False
    with pytest.raises(ConfigError, match="train.amp=true needs a CUDA device.*'cpu'"):
        amp_plugin(torch.device("cpu"))


def test_amp_hash_unchanged_when_off():
    a = resolve_config("split_mnist", "naive")
    b = resolve_config("split_mnist", "naive", overrides={"train.amp": True})
    assert a.config_hash() != b.config_hash()
    d = a.to_dict()
    d["train"].pop("amp")
    assert RunConfig.from_dict(d).config_hash() == a.config_hash()


def test_amp_plugin_runs_forward_in_bf16_and_returns_float32():
    plugin = AmpPlugin("cpu", torch.bfloat16)  # CPU autocast exercises the same hooks
    lin = torch.nn.Linear(4, 3)
    s = _Strategy(torch.randn(2, 4))
    plugin.before_forward(s)
    out = lin(s.mbatch[0])
    assert out.dtype == torch.bfloat16
    s.mb_output = out
    plugin.after_forward(s)
    assert s.mb_output.dtype == torch.float32 and not torch.is_autocast_cpu_enabled()


def test_multistep_lr_steps_per_epoch_and_resets_every_experience(tmp_path):
    """Mammoth rebuilds optimizer and scheduler every task: lr per epoch is the same list each experience."""
    from avalanche.core import SupervisedPlugin

    from clbench.registry import SCENARIOS
    from clbench.runner import build_strategy
    from clbench.scenarios.validation import build_stream
    from tests.test_datasets import write_cifar_pickles

    write_cifar_pickles(tmp_path, bytes_keys=True, per_class=2)
    cfg = resolve_config("split_cifar100", "naive", profile="smoke", overrides={
        "scenario.n_experiences": 2, "model": "conv4", "epochs": 4, "lr": 0.8,
        "plugins": ["multistep_lr"], "plugin.multistep_lr.milestones": [1, 3], "plugin.multistep_lr.gamma": 0.5,
    })
    stream = build_stream(SCENARIOS.get("split_cifar100"), cfg.scenario_args, "smoke", 0, tmp_path, False)
    seen = []

    class Recorder(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            seen.append(strategy.optimizer.param_groups[0]["lr"])

    _, strategy = build_strategy(cfg, stream, torch.device("cpu"))
    strategy.plugins.append(Recorder())
    for exp in stream.to_benchmark().train_stream:
        strategy.train(exp)
    assert seen == [0.8, 0.4, 0.4, 0.2] * 2


def test_der_plugins_see_the_replayed_rows(tmp_path):
    """crop_flip must augment DER's replayed samples too (as Mammoth does): before_forward sees them."""
    from avalanche.core import SupervisedPlugin

    from clbench.registry import SCENARIOS
    from clbench.runner import build_strategy
    from clbench.scenarios.validation import build_stream
    from tests.test_datasets import write_cifar_pickles

    write_cifar_pickles(tmp_path, bytes_keys=True, per_class=2)
    cfg = resolve_config("split_cifar100", "der", profile="smoke", overrides={
        "scenario.n_experiences": 2, "model": "conv4", "train_mb_size": 8,
        "strategy.mem_size": 10, "strategy.batch_size_mem": 4,
    })
    stream = build_stream(SCENARIOS.get("split_cifar100"), cfg.scenario_args, "smoke", 0, tmp_path, False)
    sizes = []

    class Recorder(SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            sizes.append((strategy.clock.train_exp_counter, len(strategy.mbatch[0])))

    _, strategy = build_strategy(cfg, stream, torch.device("cpu"))
    strategy.plugins.append(Recorder())
    for exp in stream.to_benchmark().train_stream:
        strategy.train(exp)
    assert {n for e, n in sizes if e == 0} <= {8, 4} and max(n for e, n in sizes if e == 1) == 8 + 4
