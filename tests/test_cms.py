"""CMS model and multi-rate wrapper: reductions that pin down correctness (docs/cms.md).

Everything runs on tiny smoke streams (3 experiences x 128 samples, 4 iterations each).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from clbench import fastdata
from clbench.errors import ClbenchError, ConfigError
from clbench.models import count_parameters
from clbench.nested.cms import (
    DeltaLinear,
    build_cms_mlp,
    build_cms_resnet,
    build_mlp_matched,
    cms_level_names,
)
from clbench.nested.multirate import Level, MultiRateOptimizer, MultiRatePlugin
from clbench.registry import SCENARIOS
from clbench.resolve import resolve_config
from clbench.runner import build_strategy, run_cell, seed_everything
from clbench.scenarios.stream import ScenarioInfo

TINY = {"scenario.n_experiences": 3, "scenario.train_per_exp": 128, "scenario.test_per_exp": 100}
PMNIST_INFO = ScenarioInfo("pmnist", "domain_il", 3, 10, (1, 28, 28), [list(range(10))] * 3)
MR = "plugin.cms_multirate."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg(strategy="naive", **overrides):
    return resolve_config(
        "pmnist", strategy, seed=0, profile="smoke", overrides={**TINY, **overrides}
    )


_STREAMS: dict = {}  # tiny streams are read-only: build each once per session


def train(config, data_root, probe=None):
    """Train a cell like run_cell does; returns (initial weights, model, strategy)."""
    key = (config.scenario, config.profile, config.seed, str(sorted(config.scenario_args.items())))
    if key not in _STREAMS:
        spec = SCENARIOS.get(config.scenario)
        _STREAMS[key] = spec.builder(
            spec.options(**config.scenario_args), config.profile, config.seed, data_root, False
        )
    stream = _STREAMS[key]
    with fastdata.fast_fetch():
        seed_everything(config.seed)
        model, strategy = build_strategy(config, stream, torch.device("cpu"))
        initial = {k: v.detach().clone() for k, v in model.named_parameters()}
        if probe is not None:
            strategy.plugins.append(probe)  # after the multi-rate plugin: sees its effects
        for exp in stream.to_benchmark().train_stream:
            strategy.train(exp)
    return initial, model, strategy


def plugin_of(strategy) -> MultiRatePlugin:
    return next(p for p in strategy.plugins if isinstance(p, MultiRatePlugin))


# --------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("model", ["mlp", "cms_mlp"])
def test_all_periods_one_reproduces_the_plain_run(tmp_path, data_root, model):
    plain = cfg(model=model)
    multi = cfg(
        model=model,
        plugins=["cms_multirate"],
        **{MR + "periods": [1, 1, 1], MR + "reduction": "mean"},
    )
    a = run_cell(plain, tmp_path / "a", data_root=data_root, progress=False)
    b = run_cell(multi, tmp_path / "b", data_root=data_root, progress=False)
    assert a["status"] == b["status"] == "ok", b["traceback"]
    assert torch.allclose(torch.tensor(a["matrix"]), torch.tensor(b["matrix"]), atol=1e-6)
    _, m1, _ = train(plain, data_root)
    _, m2, s2 = train(multi, data_root)
    assert isinstance(s2.optimizer, MultiRateOptimizer)
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert torch.allclose(p1, p2, atol=1e-6, rtol=1e-5), name


def test_zero_lr_on_all_levels_but_one_changes_only_that_level(data_root):
    config = cfg(
        model="cms_mlp",
        plugins=["cms_multirate"],
        **{MR + "periods": [1, 2, 4], MR + "lr_mults": [0.0, 1.0, 0.0], MR + "outer": "fastest"},
    )
    initial, model, _ = train(config, data_root)
    levels = cms_level_names(model)
    assert levels[1]
    for name, p in model.named_parameters():
        moved = not torch.equal(p, initial[name])
        assert moved == (name in levels[1]), name


def test_updates_happen_exactly_at_multiples_of_each_period():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    periods = (1, 3, 5)
    levels = [
        Level(f"l{i}", list(m.parameters()), c)
        for i, (m, c) in enumerate(zip(net, periods, strict=True))
    ]
    opt = MultiRateOptimizer(
        levels, lambda i, ps, mult: torch.optim.SGD(ps, lr=0.1), reduction="mean"
    )
    for t in range(1, 32):
        before = [m.weight.detach().clone() for m in net]
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        for i, (m, c) in enumerate(zip(net, periods, strict=True)):
            assert (not torch.equal(m.weight, before[i])) == (t % c == 0), (t, i)
            assert opt.updates[i] == t // c
    assert [opt.pending(i) for i in range(3)] == [0, 31 % 3, 31 % 5]
    assert opt.flush() == [1, 2] and opt.updates == [31, 31 // 3 + 1, 31 // 5 + 1]


@pytest.mark.parametrize("reduction, factor", [("mean", 1.0), ("sum", 4.0)])
def test_sum_and_mean_reductions(reduction, factor):
    p = nn.Parameter(torch.zeros(2))
    opt = MultiRateOptimizer(
        [Level("l", [p], 4)], lambda i, ps, m: torch.optim.SGD(ps, lr=1.0), reduction
    )
    for _ in range(4):
        p.grad = torch.ones(2)  # four equal gradients: mean = g, sum = 4 g
        opt.step()
    assert torch.allclose(p.detach(), -factor * torch.ones(2))


def test_update_counts_through_avalanche_with_and_without_flush(data_root):
    # 3 experiences x 4 iterations: without flush, chunks run across experience boundaries.
    _, _, s = train(
        cfg(
            model="cms_mlp",
            plugins=["cms_multirate"],
            **{MR + "periods": [1, 2, 8], MR + "flush": False},
        ),
        data_root,
    )
    assert s.optimizer.iteration == 12 and s.optimizer.updates == [12, 6, 1, 12]  # last = outer
    _, _, s = train(
        cfg(model="cms_mlp", plugins=["cms_multirate"], **{MR + "periods": [1, 3, 8]}), data_root
    )
    assert s.optimizer.updates == [12, 3 * 2, 3, 12]  # per experience: one full chunk + a flush


class Probe(SupervisedPlugin):
    """Records the nested blocks' fast deltas at experience start and after updates."""

    def __init__(self):
        super().__init__()
        self.at_start, self.after_chunk = [], []

    def before_training_exp(self, strategy, **kwargs):
        self.at_start.append(_delta_norm(strategy.model, block=0))

    def after_update(self, strategy, **kwargs):
        if 1 in strategy.optimizer.last_fired:  # level 1 holds block 0's initial state
            self.after_chunk.append(_delta_norm(strategy.model, block=0))


def _delta_norm(model, block):
    return sum(
        float(p.detach().norm())
        for n, p in model.named_parameters()
        if f"blocks.{block}." in n and "delta_" in n
    )


@pytest.mark.parametrize("when", ["experience", "chunk"])
def test_nested_variant_reinitialises_fast_blocks(data_root, when):
    probe = Probe()
    config = cfg(
        model="cms_mlp",
        plugins=["cms_multirate"],
        **{"model.variant": "nested", MR + "periods": [1, 2, 4], MR + "nested_reset": when},
    )
    initial, model, _ = train(config, data_root, probe)
    init_w = "features.chain.blocks.0.fc1.init_weight"
    assert not torch.equal(model.get_parameter(init_w), initial[init_w])  # the init is learned
    if when == "experience":
        assert (
            _delta_norm(model, 0) > 0
        )  # the fast block moved away from its init in the last experience
        assert probe.at_start[0] == 0 and all(v == 0 for v in probe.at_start[1:])
    else:
        assert len(probe.after_chunk) == 6 and all(v == 0 for v in probe.after_chunk)
    fast = [m for m in model.modules() if isinstance(m, DeltaLinear)]
    assert len(fast) == 4  # blocks 0 and 1 (fc1, fc2) are nested; the slowest block is plain


@pytest.mark.parametrize("keep", [True, False])
def test_optimizer_state_kept_or_reset_across_experiences(data_root, keep):
    config = cfg(
        model="cms_mlp",
        optimizer="adam",
        lr=1e-3,
        plugins=["cms_multirate"],
        **{MR + "periods": [1, 2, 4], MR + "keep_state": keep, MR + "flush": False},
    )
    _, model, s = train(config, data_root)
    wrapper = plugin_of(s).optimizer
    assert s.optimizer is wrapper  # survived three make_optimizer calls
    grouped = [p for g in wrapper.param_groups for p in g["params"]]
    assert len(grouped) == len(list(model.parameters()))  # Avalanche added nothing to it
    steps = {i: int(next(iter(wrapper.inner(i).state.values()))["step"]) for i in range(3)}
    # Adam's step counts the level's own updates: 12 iterations -> 12, 6, 3 when kept;
    # only the last experience's 4 iterations (-> 4, 2, 1) when reset at each boundary.
    assert steps == ({0: 12, 1: 6, 2: 3} if keep else {0: 4, 1: 2, 2: 1})


class HeadProbe(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.snapshots = []

    def after_training_exp(self, strategy, **kwargs):
        heads = strategy.model.classifier.heads
        self.snapshots.append([h.weight.detach().clone() for h in heads])


def test_heads_without_gradient_are_not_moved_by_momentum_or_decay(data_root):
    # Task-IL: the other tasks' heads get no gradient. They sit in a period-4 level whose
    # inner SGD has momentum and weight decay; a zero gradient would still move them.
    probe = HeadProbe()
    config = resolve_config(
        "split_mnist_til",
        "naive",
        profile="smoke",
        overrides={
            "scenario.train_per_exp": 100,
            "scenario.test_per_exp": 20,
            "optimizer": "sgd",
            "momentum": 0.9,
            "weight_decay": 1e-3,
            "lr": 0.01,
            "plugins": ["cms_multirate"],
            MR + "periods": [2, 2, 4],
        },
    )
    initial, _, _ = train(config, data_root, probe)
    for exp, heads in enumerate(probe.snapshots):
        for task, weight in enumerate(heads):
            trained = task <= exp
            changed = not torch.equal(weight, initial[f"classifier.heads.{task}.weight"])
            assert changed == trained, (exp, task)


# --------------------------------------------------------------------------- composition
def test_plugin_composes_with_other_strategies_and_the_ready_strategy(tmp_path, data_root):
    for config in (
        cfg("replay", model="mlp", plugins=["cms_multirate"]),
        cfg(
            "cms", model="cms_mlp", **{"model.variant": "independent", "strategy.reduction": "sum"}
        ),
    ):
        result = run_cell(config, tmp_path, data_root=data_root, progress=False)
        assert result["status"] == "ok", result["traceback"]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "key, value, message",
    [
        (MR + "periods", [0, 8], "positive integers"),
        (MR + "periods", [1, 2.5], "not an integer"),
        (MR + "periods", [], "one period per level"),
        (MR + "inner_optimizer", ["nope"], "unknown inner optimizer 'nope'"),
        (MR + "lr_mults", [1.0], "one value per level"),
        (MR + "rule", "names", "one groups entry per period"),
    ],
)
def test_bad_plugin_options_fail_at_config_time(key, value, message):
    with pytest.raises(ConfigError, match=message):
        cfg(model="cms_mlp", plugins=["cms_multirate"], **{key: value})


def test_bad_strategy_options_fail_at_config_time():
    with pytest.raises(ConfigError, match="positive integers"):
        cfg("cms", model="cms_mlp", **{"strategy.periods": [1, -8]})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {
                MR + "rule": "names",
                MR + "periods": [1, 8],
                MR + "groups": ["features.*", "classifier.weight"],
            },
            "'classifier.bias' is in no level",
        ),
        (
            {
                MR + "rule": "names",
                MR + "periods": [1, 8],
                MR + "groups": ["features.*|classifier.*", "classifier.*"],
            },
            "'classifier.weight' is in two",
        ),
        ({MR + "periods": [1, 8]}, "3 CMS levels but periods has 2"),
        ({MR + "rule": "cms", "model": "mlp"}, "needs a model with a CMSChain"),
        ({MR + "periods": [8, 1, 1], "model.variant": "nested"}, "must not decrease"),
    ],
)
def test_bad_level_assignment_fails_when_the_strategy_is_built(overrides, message):
    config = cfg(**{"model": "cms_mlp", "plugins": ["cms_multirate"], **overrides})
    with pytest.raises(ClbenchError, match=message):
        build_strategy(config, SimpleNamespace(info=PMNIST_INFO), torch.device("cpu"))


def test_cms_strategy_on_a_plain_model_warns_and_uses_depth_levels():
    with pytest.warns(UserWarning, match="no CMS blocks"):
        _, strategy = build_strategy(
            cfg("cms", model="mlp"), SimpleNamespace(info=PMNIST_INFO), torch.device("cpu")
        )
    assert [g["period"] for g in strategy.optimizer.param_groups] == [1, 8, 64]  # fc1, fc2, head
    with pytest.raises(ConfigError, match="already applies"):
        build_strategy(
            cfg("cms", model="cms_mlp", plugins=["cms_multirate"]),
            SimpleNamespace(info=PMNIST_INFO),
            torch.device("cpu"),
        )


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
@pytest.mark.parametrize("task_il", [False, True])
def test_mlp_matched_matches_the_cms_parameter_count(profile, task_il):
    info = ScenarioInfo(
        "s", "task_il" if task_il else "domain_il", 5, 10, (1, 28, 28), [[0, 1]] * 5
    )
    cms, plain = (
        count_parameters(build_cms_mlp(info, profile)),
        count_parameters(build_mlp_matched(info, profile)),
    )
    print(f"{profile} task_il={task_il}: cms_mlp {cms} params, mlp_matched {plain} params")
    assert abs(plain - cms) / cms < 0.02


def test_models_expose_features_classifier_and_levels():
    info = ScenarioInfo("c", "task_il", 2, 4, (3, 32, 32), [[0, 1], [2, 3]])
    model = build_cms_resnet(info, "smoke", variant="independent")
    assert hasattr(model, "features") and hasattr(model, "classifier")
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert out.shape == (2, 2)
    levels = cms_level_names(model)
    assert len(levels) == 3 and all(levels)
    in_levels = {n for level in levels for n in level}
    assert "features.chain.agg" not in in_levels and not any("stem" in n for n in in_levels)
