"""Deep optimizers (clbench.nested.optim): reductions to known optimizers, DGD's closed form,
optimizer memory across Avalanche experiences, config-time validation, and clbench runs."""

from __future__ import annotations

import copy

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.dynamic_optimizers import update_optimizer
from torch import nn

from clbench.cli import main
from clbench.config import TrainConfig
from clbench.errors import ConfigError
from clbench.nested.optim import DGD, DMGD, M3, DeltaMomentum, dgd_linear_update
from clbench.nested.optim.dmgd import _read
from clbench.registry import OPTIMIZERS, SCENARIOS
from clbench.resolve import resolve_config
from clbench.runner import build_strategy
from clbench.scenarios.datasets import resolve_data_root

TINY = {"scenario.n_experiences": 2, "scenario.train_per_exp": 96, "scenario.test_per_exp": 64}


def tiny_model(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16, bias=bias), nn.Tanh(), nn.Linear(16, 4, bias=bias))


def batches(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 12, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def run_steps(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("objective", ["precond", "l2_recon"])
def test_dmgd_with_identity_memory_is_exactly_sgd_momentum(objective):
    a, b = tiny_model(), tiny_model()
    ours = DMGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, objective=objective, memory_lr=0.0,
                token_dim=5)  # 5 divides no parameter size: exercises the padding
    ref = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for p, q in zip(run_steps(a, ours, batches()), run_steps(b, ref, batches()), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert ours.memory["U"].abs().sum() == 0


@pytest.mark.parametrize("objective", ["precond", "l2_recon"])
def test_dmgd_memory_learns_its_objective_and_keeps_the_gradient_scale(objective):
    p = nn.Parameter(torch.zeros(64, 32))
    opt = DMGD([p], lr=0.0, objective=objective, retention=1.0, memory_tokens=64)
    torch.manual_seed(0)
    scales = torch.ones(32)
    scales[:4] = 10.0  # anisotropic gradient tokens: something to whiten / denoise
    mean, losses = torch.randn(64, 32) * scales, []
    for _ in range(80):
        p.grad = torch.randn(64, 32) * scales if objective == "precond" else mean + 3 * torch.randn(64, 32)
        opt.step()
        losses.append(opt.memory["loss"])
    assert sum(losses[-10:]) < 0.75 * sum(losses[1:11])
    assert opt.memory["U"].abs().sum() > 0
    x = torch.randn(10, 32)
    torch.testing.assert_close(_read(opt.memory, 7.0 * x), 7.0 * _read(opt.memory, x))  # homogeneous


def reference_ns(g, steps, poly):
    """Independent Newton–Schulz: the polynomials written out, no addmm, no shared code."""
    x = g / torch.linalg.matrix_norm(g)
    flip = x.shape[0] > x.shape[1]
    x = x.T if flip else x
    for _ in range(steps):
        if poly == "quintic":
            a = x @ x.T
            x = 3.4445 * x - 4.7750 * (a @ x) + 2.0315 * (a @ a @ x)
        else:
            x = 1.5 * x - 0.5 * (x @ x.T @ x)
    return x.T if flip else x


@pytest.mark.parametrize("poly", ["quintic", "cubic"])
@pytest.mark.parametrize("mode", ["ema", "accumulate"])
def test_m3_with_one_level_is_muon_and_its_fallback_is_adamw(poly, mode):
    a, b = tiny_model(), tiny_model()
    ours = M3(a.parameters(), lr=0.02, weight_decay=0.01, alpha=0.0, second_moment="none", ns_poly=poly,
              ns_steps=5, momentum_mode=mode, beta1=0.9, beta2=0.99, eps=1e-8)
    adamw = torch.optim.AdamW([b[0].bias, b[2].bias], lr=0.02, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    matrices, bufs = [b[0].weight, b[2].weight], [None, None]
    for x, y in batches():
        ours.zero_grad()
        nn.functional.cross_entropy(a(x), y).backward()
        ours.step()
        adamw.zero_grad()
        b.zero_grad()
        nn.functional.cross_entropy(b(x), y).backward()
        adamw.step()
        with torch.no_grad():  # Muon: m ← βm + g (accumulate: m ← m + g), W ← W(1 − lr·wd) − lr·NS(m)
            for i, w in enumerate(matrices):
                decay = 0.9 if mode == "ema" else 1.0
                bufs[i] = w.grad.clone() if bufs[i] is None else decay * bufs[i] + w.grad
                w.mul_(1 - 0.02 * 0.01).sub_(0.02 * reference_ns(bufs[i], 5, poly))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["post", "pre"])
def test_m3_two_levels_follow_algorithm_1(where):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 4))
    opt = M3([w], lr=0.01, momentum_mode="accumulate", alpha=0.5, slow_every=3, beta1=0.5, beta2=0.25,
             beta3=0.75, eps=1e-6, ns_poly="cubic", ns_steps=8, second_moment=where)
    ref = w.detach().clone()
    m1, m2, v, chunk, o2 = (torch.zeros(6, 4) for _ in range(5))
    for t in range(1, 8):
        g = torch.randn(6, 4)
        w.grad = g.clone()
        opt.step()
        m1, v, chunk = m1 + 0.5 * g, v + 0.25 * g * g, chunk + g
        denom = v.sqrt() + 1e-6
        if where == "post":  # Algorithm 1 as printed
            ref -= 0.01 * (reference_ns(m1, 8, "cubic") + 0.5 * o2) / denom
        else:
            ref -= 0.01 * (reference_ns(m1 / denom, 8, "cubic") + 0.5 * o2)
        if t % 3 == 0:  # the chunk closes: the slow level absorbs it, used from the next step on
            m2, chunk = m2 + 0.75 * chunk, torch.zeros(6, 4)
            o2 = reference_ns(m2 if where == "post" else m2 / denom, 8, "cubic")
        torch.testing.assert_close(w.detach(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["matrix", "projection", "scalar"])
def test_delta_momentum_with_zero_gradient_is_pure_decay_and_delta_zero_is_sgd(form):
    a = tiny_model()
    opt = DeltaMomentum(a.parameters(), lr=0.1, momentum=0.8, delta=0.7, form=form)
    run_steps(a, opt, batches(3))
    before = {p: (p.detach().clone(), opt.state[p]["momentum_buffer"].clone()) for p in a.parameters()}
    for p in a.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, (w0, b0) in before.items():
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], 0.8 * b0, rtol=0, atol=0)
        torch.testing.assert_close(p.detach(), w0 - 0.1 * (0.8 * b0))
    c, d = tiny_model(), tiny_model()
    zero = DeltaMomentum(c.parameters(), lr=0.1, momentum=0.8, delta=0.0, form=form, weight_decay=1e-3)
    sgd = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.8, weight_decay=1e-3)
    for p, q in zip(run_steps(c, zero, batches()), run_steps(d, sgd, batches()), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_delta_momentum_overwrites_only_along_the_gradient():
    w = nn.Parameter(torch.zeros(3, 4))
    opt = DeltaMomentum([w], lr=0.0, momentum=1.0 - 1e-9, delta=0.5, form="matrix")
    x = torch.tensor([1.0, 0, 0, 0])
    old = torch.tensor([[2.0, 3.0, 0, 0]] * 3)
    opt.state[w]["momentum_buffer"] = old.clone()
    w.grad = torch.outer(torch.tensor([1.0, -1.0, 2.0]), x)  # rank 1: row space = x
    opt.step()
    new = opt.state[w]["momentum_buffer"] - w.grad
    torch.testing.assert_close(new[:, 0], 0.5 * old[:, 0])  # along the input x: half overwritten
    torch.testing.assert_close(new[:, 1], old[:, 1])  # orthogonal input directions: kept


# --------------------------------------------------------------------------- DGD
def numerical_argmin(w_t, x, u, lr):
    """argmin_W (1/n) Σ ½‖W x_b − u_b‖² + 1/(2 lr)‖W − W_t‖², by the normal equations and by GD."""
    n, width = x.shape
    direct = torch.linalg.solve(x.T @ x / n + torch.eye(width, dtype=x.dtype) / lr, (u.T @ x / n + w_t / lr).T).T
    w = w_t.clone().requires_grad_()
    step = 1.0 / (1.0 / lr + torch.linalg.matrix_norm(x.T @ x / n, ord=2))
    for _ in range(3000):
        loss = 0.5 * ((x @ w.T - u) ** 2).sum() / n + 0.5 / lr * ((w - w_t) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, w)
        w = (w - step * grad).detach().requires_grad_()
    torch.testing.assert_close(w.detach(), direct, rtol=1e-8, atol=1e-9)
    return direct


@pytest.mark.parametrize("n, width", [(1, 5), (3, 5), (9, 5)])  # single sample, Woodbury, direct solve
def test_dgd_closed_form_equals_the_numerical_argmin(n, width):
    torch.manual_seed(n)
    w_t, x = torch.randn(4, width, dtype=torch.float64), torch.randn(n, width, dtype=torch.float64)
    grad_y = torch.randn(n, 4, dtype=torch.float64) / n  # ∇_{y_b} of a mean loss
    lr = 0.3
    ours = dgd_linear_update(w_t, x, grad_y.T @ x, lr)
    torch.testing.assert_close(ours, numerical_argmin(w_t, x, -n * grad_y, lr))
    if n == 1:  # the spec's Sherman–Morrison form: W(I − η′xxᵀ) − η′∇_yL xᵀ
        x1, eta = x[0], lr / (1 + lr * x[0].dot(x[0]))
        spec = w_t @ (torch.eye(width, dtype=x.dtype) - eta * torch.outer(x1, x1)) - eta * torch.outer(grad_y[0], x1)
        torch.testing.assert_close(ours, spec)


@pytest.mark.parametrize("normalize", [False, True])
def test_dgd_optimizer_applies_the_closed_form_to_linear_layers_and_sgd_elsewhere(normalize):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3, bias=False))
    ref = copy.deepcopy(model)
    opt = DGD(model.parameters(), lr=0.2, normalize_inputs=normalize)
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        ref.eval()  # capture the layer inputs of the same forward by hand
        hidden = ref[1](ref[0](x))
    nn.functional.cross_entropy(ref(x), y).backward()
    unit = (lambda r: r / r.norm(dim=1, keepdim=True)) if normalize else (lambda r: r)
    x0 = torch.cat([x, torch.ones(7, 1)], dim=1)
    w0 = torch.cat([ref[0].weight, ref[0].bias[:, None]], dim=1).detach()
    g0 = torch.cat([ref[0].weight.grad, ref[0].bias.grad[:, None]], dim=1)
    new0 = dgd_linear_update(w0, unit(x0), g0, 0.2)
    torch.testing.assert_close(model[0].weight.detach(), new0[:, :6])
    torch.testing.assert_close(model[0].bias.detach(), new0[:, 6])
    torch.testing.assert_close(model[2].weight.detach(),
                               dgd_linear_update(ref[2].weight.detach(), unit(hidden), ref[2].weight.grad, 0.2))
    torch.testing.assert_close(model[1].weight.detach(), ref[1].weight.detach() - 0.2 * ref[1].weight.grad)
    with torch.no_grad():
        model(x)  # evaluation forwards are not captured
    assert not opt._captures


# --------------------------------------------------------------------------- state across experiences
class MemorySnapshots(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.after_exp, self.before_exp = [], []

    def before_training_exp(self, strategy, **kwargs):  # runs after Avalanche's make_optimizer
        mem = strategy.optimizer.memory
        self.before_exp.append(None if mem is None else mem["U"].clone())

    def after_training_exp(self, strategy, **kwargs):
        self.after_exp.append(strategy.optimizer.memory["U"].clone())


@pytest.mark.parametrize("reset", [False, True])
def test_dmgd_memory_crosses_experience_boundaries_unless_reset(reset, data_root):
    cfg = resolve_config("pmnist", "dmgd", profile="smoke",
                         overrides={**TINY, "strategy.reset_optimizer_state": reset})
    spec = SCENARIOS.get("pmnist")
    stream = spec.builder(spec.options(**cfg.scenario_args), "smoke", 0, resolve_data_root(data_root), False)
    _, strategy = build_strategy(cfg, stream, torch.device("cpu"))
    snapshots = MemorySnapshots()
    strategy.plugins.append(snapshots)
    for exp in stream.to_benchmark().train_stream:
        strategy.train(exp)
    assert isinstance(strategy.optimizer, DMGD)
    first_end, second_start = snapshots.after_exp[0], snapshots.before_exp[1]
    assert first_end.abs().sum() > 0  # the memory learned something during experience 1
    if reset:
        assert second_start is None  # state dropped; recreated from φ₀ (U = 0) at the next step
    else:
        torch.testing.assert_close(second_start, first_end, rtol=0, atol=0)


def test_adding_parameters_keeps_the_memory_and_state_dict_round_trips():
    model = tiny_model()
    opt = DMGD(model.parameters(), lr=0.05)
    run_steps(model, opt, batches(3))
    memory = {k: v.clone() for k, v in opt.memory.items() if torch.is_tensor(v)}
    head = nn.Linear(16, 2)
    model.add_module("extra", head)
    update_optimizer(opt, dict(model.named_parameters()), None, reset_state=False)  # Avalanche's path
    loose = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [loose]})
    for key, value in memory.items():
        torch.testing.assert_close(opt.memory[key], value, rtol=0, atol=0)
    before = head.weight.detach().clone()
    head.weight.grad = torch.ones_like(head.weight)
    opt.step()
    assert not torch.equal(head.weight, before)  # the added parameter is trained
    clone = DMGD(model.parameters(), lr=0.05)
    clone.add_param_group({"params": [loose]})
    clone.load_state_dict(copy.deepcopy(opt.state_dict()))
    torch.testing.assert_close(clone.memory["V"], opt.memory["V"], rtol=0, atol=0)
    assert clone.memory["step"] == opt.memory["step"]


# --------------------------------------------------------------------------- config and runs
@pytest.mark.parametrize("optimizer, key, value, message", [
    ("m3", "ns_steps", 0, "ns_steps=0 is out of range; accepted: an integer in [1, 100]"),
    ("m3", "beta1", 1.0, "beta1=1.0 is out of range; accepted: 0 <= beta1 < 1"),
    ("dmgd", "objective", "dot", "accepted: 'precond', 'l2_recon'"),
    ("dmgd", "retention", 0.0, "retention=0.0 is out of range; accepted: 0 < retention <= 1"),
    ("delta_momentum", "delta", 2.0, "delta=2.0 is out of range; accepted: 0 <= delta <= 1"),
    ("dgd", "input_decay", -1.0, "input_decay=-1.0 is out of range"),
])
def test_bad_options_fail_at_config_time(optimizer, key, value, message):
    with pytest.raises(ConfigError) as err:
        resolve_config("pmnist", "naive", overrides={"optimizer": optimizer, f"optim.{key}": value})
    assert message in str(err.value)


LRS = {"delta_momentum": 0.05, "dmgd": 0.05, "m3": 0.01, "dgd": 0.5}


@pytest.mark.parametrize("name", sorted(LRS))
def test_each_optimizer_trains_a_tiny_model(name):
    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = (x @ torch.randn(12, 4)).argmax(1)
    model = tiny_model()
    opt = OPTIMIZERS.get(name).factory(model.parameters(), TrainConfig(lr=LRS[name]), None)
    losses = []
    for step in range(80):
        idx = torch.arange(step * 16, step * 16 + 32) % 256
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # DGD's input decay acts like a strong, input-shaped weight decay: it plateaus higher.
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10]), losses


@pytest.mark.parametrize("extra", [
    ["--strategy", "naive", "--set", "optimizer=delta_momentum", "--set", "optim.form=projection"],
    ["--strategy", "naive", "--set", "optimizer=m3", "--set", "lr=0.005"],
    ["--strategy", "naive", "--set", "optimizer=dgd"],
    ["--strategy", "dmgd", "--set", "optimizer=dmgd", "--set", "optim.objective=l2_recon", "--set", "strategy.reset_optimizer_state=true"],
])
def test_clbench_run_with_each_optimizer(extra, tmp_path, data_root, capsys):
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    code = main(["run", "--scenario", "pmnist", "--profile", "smoke", "-q", "--data-root", str(data_root),
                 "--out", str(tmp_path), *sets, *extra])
    out = capsys.readouterr().out
    assert code == 0 and "ACC" in out, out
