"""MultiRateOptimizer on kernel K3 (`clbench.kernels.cms_step`) vs its per-level path.

On CPU the K3 path ("auto" = the foreach reference) must give bit-identical parameters,
counters and optimizer state to the per-level path (`kernel=False`: accumulators swapped
in as `.grad`, then torch.optim's own step), through partial chunks, task-IL heads without
gradients, a flush, a level whose parameter set changes (sync), reset_state and a
state_dict round trip in both directions. The Triton path runs once in a subprocess under
TRITON_INTERPRET=1 (this file as a script, `main` below) and is compared with the per-level
path in fp32: relative-norm error below 1e-4 (§9.4).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
from functools import partial

import pytest
import torch
from torch import nn

from clbench.config import TrainConfig
from clbench.nested import multirate
from clbench.nested.multirate import Level, MultiRateOptimizer, _registry_builder
from clbench.registry import OPTIMIZERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-4
INNER = {
    "sgd": partial(torch.optim.SGD, lr=0.1),
    "sgd-momentum-wd": partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam-wd": partial(torch.optim.Adam, lr=0.01, weight_decay=0.1),
    "adamw": partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1),
}


class TaskNet(nn.Module):
    """stem -> mid -> one head per task: the other task's head gets no gradient
    (task -1: both heads side by side, so every parameter gets one)."""

    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()
        self.stem, self.mid = nn.Linear(6, width), nn.Linear(width, width)
        self.heads = nn.ModuleList(nn.Linear(width, classes) for _ in range(2))

    def forward(self, x, task: int):
        h = torch.tanh(self.mid(torch.tanh(self.stem(x))))
        return torch.cat([head(h) for head in self.heads], 1) if task == -1 else self.heads[task](h)


def build(net: TaskNet, inner: str, reduction: str = "mean", **kernel) -> MultiRateOptimizer:
    levels = [
        Level("stem", list(net.stem.parameters()), 1),
        Level("mid", list(net.mid.parameters()), 2, lr_mult=0.5),
        Level("heads", list(net.heads.parameters()), 4),
    ]
    return MultiRateOptimizer(
        levels, lambda i, ps, mult: INNER[inner](ps, lr=INNER[inner].keywords["lr"] * mult),
        reduction, **kernel,
    )  # fmt: skip


def train_step(net, opt, x, task: int) -> None:
    opt.zero_grad()
    net(x, task).pow(2).mean().backward()
    opt.step()


def grow_head(net: TaskNet, opt: MultiRateOptimizer, task: int) -> None:
    """What Avalanche does when a head gains units: new Parameter objects (old rows kept),
    swapped into the optimizer's group by update_optimizer; the plugin then calls sync()."""
    old = net.heads[task]
    torch.manual_seed(100 + task)  # the same new units in every copy of the net
    new = nn.Linear(old.in_features, old.out_features + 2)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    group = opt.param_groups[2]["params"]
    for p_old, p_new in zip(old.parameters(), new.parameters(), strict=True):
        group[[id(p) for p in group].index(id(p_old))] = p_new
    net.heads[task] = new
    opt.sync()


def assert_same(a, b, where="") -> None:
    """Bitwise equality of nested state (tensors via torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (where, a.keys(), b.keys())
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{k}]")
    else:
        assert a == b, (where, a, b)


def run_pair(nets, opts, schedule, seed: int) -> None:
    """Train every (net, optimizer) on the same batches; after each step all must agree."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(nets[0].parameters()).dtype
    for task in schedule:
        x = torch.randn(5, 6, generator=g, dtype=dtype)
        for net, opt in zip(nets, opts, strict=True):
            train_step(net, opt, x, task)
        ref = nets[0]
        for net, opt in zip(nets[1:], opts[1:], strict=True):
            for (name, p), q in zip(ref.named_parameters(), net.parameters(), strict=True):
                assert torch.equal(p, q), name
            assert (opt.updates, opt.last_fired) == (opts[0].updates, opts[0].last_fired)
            assert [opt.pending(i) for i in range(3)] == [opts[0].pending(i) for i in range(3)]


@pytest.fixture(autouse=True)
def _no_kernel_override(monkeypatch):
    monkeypatch.delenv("CLBENCH_KERNELS", raising=False)  # "auto" must mean the CPU reference


# --------------------------------------------------------------------------- bitwise on CPU
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("inner", list(INNER))
def test_kernel_path_is_bitwise_equal_to_the_per_level_path(inner, reduction):
    torch.manual_seed(0)
    net = TaskNet()
    nets = [net, copy.deepcopy(net)]
    kernel, plain = build(nets[0], inner, reduction), build(nets[1], inner, reduction, kernel=False)
    opts = [kernel, plain]
    assert [kernel.kernel_level(i) is not None for i in range(3)] == [True] * 3
    assert all(plain.kernel_level(i) is None for i in range(3))
    # experience 1: task 0 only (head 1 never has a gradient), 7 steps: partial chunks
    run_pair(nets, opts, [0] * 7, seed=1)
    assert kernel.flush() == plain.flush() == [1, 2]
    assert_same(kernel.state_dict(), plain.state_dict())
    # experience 2: head 1 grows (new parameters in level 2), tasks mixed within chunks
    before = kernel.kernel_level(2)
    for n, o in zip(nets, opts, strict=True):
        grow_head(n, o, task=1)
    assert kernel.kernel_level(2) is not before and kernel.kernel_level(0) is not None
    assert kernel.kernel_level(2).params[2] is nets[0].heads[1].weight
    run_pair(nets, opts, [1, 1, 0, 1, 1, 1, 0, 0, 1], seed=2)
    assert kernel.flush() == plain.flush()
    # experience 3 after a state reset (keep_state=false), 6 steps, no flush
    for o in opts:
        o.reset_state()
    run_pair(nets, opts, [0, 1, 1, 0, 0, 1], seed=3)
    assert_same(kernel.state_dict(), plain.state_dict())
    assert all(kernel.kernel_ran(i) == {"chunk"} for i in range(3))
    assert all(plain.kernel_ran(i) == set() for i in range(3))


def test_hyperparameters_set_on_the_inner_optimizer_take_effect():
    torch.manual_seed(0)
    nets = [TaskNet(), None]
    nets[1] = copy.deepcopy(nets[0])
    opts = [build(nets[0], "adamw"), build(nets[1], "adamw", kernel=False)]
    run_pair(nets, opts, [0] * 3, seed=1)
    for o in opts:
        o.inner(1).param_groups[0]["lr"] = 0.05
        o.inner(2).param_groups[0]["weight_decay"] = 0.0
    run_pair(nets, opts, [0, 1] * 4, seed=2)


def test_levels_follow_their_parameters_to_another_dtype_or_device():
    """model.to(...) after the wrapper was built (the `cms` strategy builds it before
    Avalanche moves the model to the device): each level is rebuilt where its parameters
    now are, with its state. Shown with fp32 -> fp64, which needs no GPU."""
    torch.manual_seed(0)
    nets = [TaskNet()]
    nets.append(copy.deepcopy(nets[0]))
    opts = [build(nets[0], "adam-wd"), build(nets[1], "adam-wd", kernel=False)]
    run_pair(nets, opts, [0, 0, 1], seed=1)
    for net in nets:
        net.double()
    run_pair(nets, opts, [1, 0, 0, 1, 1], seed=2)
    flat = opts[0].kernel_level(0)
    assert flat.acc.dtype == torch.float64 and flat.params[0] is nets[0].stem.weight
    assert flat.steps == [8, 8]  # Adam's count went on: the state moved with the level
    assert opts[0].updates == opts[1].updates == [8, 4, 2]  # level 2's chunk spanned the move
    assert_same(opts[0].state_dict(), opts[1].state_dict())


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load, as a checkpoint would go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("saved_on_kernel", [True, False])
@pytest.mark.parametrize("inner", ["sgd-momentum-wd", "adam-wd"])
def test_state_dict_round_trip_between_paths(inner, saved_on_kernel):
    """Save mid-chunk on one path; load into fresh optimizers on both paths; continuing
    all three must agree bit for bit (the saved layout is torch.optim's on both paths)."""
    torch.manual_seed(0)
    net = TaskNet()
    source = build(net, inner, kernel=saved_on_kernel)
    g = torch.Generator().manual_seed(5)
    # 7 steps: levels 1 and 2 hold partial chunks; head 1 missed the first heads update,
    # so Adam's step counts differ within level 2 (1, 1, 0, 0)
    for task in [0, 0, 0, 0, 1, 0, 1]:
        train_step(net, source, torch.randn(5, 6, generator=g), task)
    saved = roundtrip(source.state_dict())
    assert [lvl["pending"] for lvl in saved["levels"]] == [0, 1, 3]
    assert len(saved["levels"][2]["inner"]["state"]) == 2  # head 0 only, as torch.optim keeps it
    nets = [net, copy.deepcopy(net), copy.deepcopy(net)]
    opts = [source, build(nets[1], inner), build(nets[2], inner, kernel=False)]
    for o in opts[1:]:
        o.load_state_dict(saved)
        assert_same(roundtrip(o.state_dict()), saved)
    run_pair(nets, opts, [1, 0, 0, 1, 1, 0, 1], seed=6)
    for o in opts:
        o.flush()
    assert_same(opts[1].state_dict(), opts[2].state_dict())
    # the loaded K3 level owns its buffers: the exported state points into them
    flat = opts[1].kernel_level(2)
    exported = opts[1].inner(2).state[flat.params[0]]
    name = flat.rule.state_names[0]
    assert exported[name].data_ptr() == flat.state_views()[name][0].data_ptr()


# --------------------------------------------------------------------------- which path
def test_levels_without_a_k3_rule_keep_the_per_level_path():
    for name in OPTIMIZERS.names():
        net = TaskNet()
        build_inner = _registry_builder(name, TrainConfig(optimizer=name, lr=0.01), {})
        levels = [
            Level("a", list(net.stem.parameters()), 2),
            Level("b", list(net.mid.parameters()), 1),
        ]
        opt = MultiRateOptimizer(levels, lambda i, ps, mult, b=build_inner: b(ps, mult))
        on_kernel = name in ("sgd", "adam", "adamw")
        assert (opt.kernel_level(0) is not None) == on_kernel, name
        assert (opt.kernel_level(1) is not None) == on_kernel, name
    net = TaskNet()
    others = {
        "nesterov": partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True),
        "amsgrad": partial(torch.optim.Adam, amsgrad=True),
        "fused": partial(torch.optim.Adam, fused=True),  # other rounding than the reference
        "rmsprop": torch.optim.RMSprop,
    }
    for name, make in others.items():
        opt = MultiRateOptimizer(
            [Level("a", list(net.parameters()), 2)], lambda i, ps, m, make=make: make(ps)
        )
        assert opt.kernel_level(0) is None, name
    frozen = MultiRateOptimizer(
        [Level("a", list(net.stem.parameters()), 2, lr_mult=0.0)],
        lambda i, ps, m: torch.optim.SGD(ps, lr=0.1),
    )
    assert frozen.kernel_level(0) is None and frozen.inner(0) is None


def test_bad_kernel_impl_is_named():
    net = TaskNet()
    with pytest.raises(ValueError, match=r"kernel_impl must be one of 'auto', .*; got 'cuda'"):
        build(net, "sgd", kernel_impl="cuda")


def test_plugin_runs_on_the_kernel_and_matches_the_per_level_path(data_root, monkeypatch):
    """Through Avalanche (task-IL heads, five experiences, flush): same final weights."""
    from clbench import fastdata
    from clbench.registry import SCENARIOS
    from clbench.resolve import resolve_config
    from clbench.runner import build_strategy, seed_everything

    config = resolve_config(
        "split_mnist_til", "naive", profile="smoke",
        overrides={
            "scenario.train_per_exp": 100,
            "scenario.test_per_exp": 20, "optimizer": "adam", "weight_decay": 1e-3,
            "lr": 0.01, "plugins": ["cms_multirate"],
            "plugin.cms_multirate.periods": [1, 2, 4],
        },
    )  # fmt: skip
    spec = SCENARIOS.get(config.scenario)
    stream = spec.builder(
        spec.options(**config.scenario_args), config.profile, config.seed, data_root, False
    )
    models, used = [], []
    for kernel in (True, False):
        monkeypatch.setattr(
            multirate, "MultiRateOptimizer", partial(MultiRateOptimizer, kernel=kernel)
        )
        with fastdata.fast_fetch():
            seed_everything(config.seed)
            model, strategy = build_strategy(config, stream, torch.device("cpu"))
            for exp in stream.to_benchmark().train_stream:
                strategy.train(exp)
        opt = strategy.optimizer
        used.append([opt.kernel_level(i) is not None for i in range(len(opt.levels))])
        models.append(model)
    assert used == [[True] * 3, [False] * 3]  # mlp: levels by depth (rule "auto")
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q), name


# ---- run in the subprocess, under TRITON_INTERPRET=1 -------------------------------


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def triton_case(inner: str) -> dict:
    """The wrapper with kernel_impl="triton" vs the per-level path (torch.optim), fp32,
    through heads without gradients, a head that grows, flushes, a reset and a reload."""
    torch.manual_seed(len(inner))
    nets = [TaskNet(width=33, classes=5)]  # 33 x 33 + 33 = 1,122 elements: 2 blocks of 1024
    nets.append(copy.deepcopy(nets[0]))
    opts = [build(nets[0], inner, kernel_impl="triton"), build(nets[1], inner, kernel=False)]
    bound = all(opts[0].kernel_level(i).unbound() == [] for i in range(3))
    g = torch.Generator().manual_seed(7)
    err = 0.0

    def run(schedule):
        nonlocal err
        for task in schedule:
            x = torch.randn(4, 6, generator=g)
            for net, opt in zip(nets, opts, strict=True):
                train_step(net, opt, x, task)
            pairs = zip(nets[0].parameters(), nets[1].parameters(), strict=True)
            err = max(err, *(rel_err(p, q) for p, q in pairs))

    run([0] * 5)  # head 1 without gradients: level 2 runs on the reference
    ran_ragged = sorted(opts[0].kernel_ran(2))
    for o in opts:
        o.flush()
    for n, o in zip(nets, opts, strict=True):
        grow_head(n, o, task=1)
    run([1, 0, -1, 1])
    for o in opts:
        o.flush()
        o.reset_state()
    run([-1] * 9)  # every parameter has a gradient: all levels on the kernel
    ran_full = [sorted(opts[0].kernel_ran(i)) for i in range(3)]
    saved = roundtrip(opts[0].state_dict())
    steps_at_save = list(opts[0].kernel_level(2).steps)
    opts[1].load_state_dict(roundtrip(opts[0].state_dict()))  # Triton-run state, torch.optim path
    run([1, -1, 0, 1, -1])
    for o in opts:
        o.flush()
    reloaded = build(copy.deepcopy(nets[0]), inner, kernel_impl="triton")
    reloaded.load_state_dict(saved)
    return {
        "err": err,
        "bound": bound,
        "ran_ragged": ran_ragged,
        "ran_full": ran_full,
        "ran_end": [sorted(opts[0].kernel_ran(i)) for i in range(3)],
        "updates_equal": opts[0].updates == opts[1].updates,
        "steps_at_save": steps_at_save,
        "steps_reloaded": reloaded.kernel_level(2).steps,
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps({inner: triton_case(inner) for inner in ("sgd-momentum-wd", "adamw")}))


# ---- interpreter tests (in the pytest process) --------------------------------------


@pytest.fixture(scope="module")
def interpreted():
    from .kernel_testing import run_interpreted  # not at the top: see kernel_testing.py

    return run_interpreted(__file__, OMP_NUM_THREADS="1")


@pytest.mark.cpu_interpreter
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("inner", ["sgd-momentum-wd", "adamw"])
def test_triton_level_steps_match_the_per_level_path(interpreted, inner):
    r = interpreted[inner]
    assert r["bound"], "the Triton path binds parameters to the flat buffer"
    assert r["ran_ragged"] == ["chunk"]  # a head without gradient: the reference runs
    assert r["ran_full"] == [["triton"]] * 3
    assert r["ran_end"] == [["triton"], ["triton"], ["chunk", "triton"]]
    assert r["updates_equal"]
    assert r["err"] < TOL, r
    # Adam's step counts survive a reload exactly; SGD keeps none (updated or not)
    expected = r["steps_at_save"] if inner == "adamw" else [min(s, 1) for s in r["steps_at_save"]]
    assert r["steps_reloaded"] == expected


if __name__ == "__main__":
    main()
