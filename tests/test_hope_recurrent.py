"""Self-modifying Titans at chunk size 1 is the plain online (fully recurrent) rule.

With chunks of one token the chunk-start state of token t is the state after t - 1, so
every projection, every self-generated value and every inner gradient is taken at the
current state: no snapshots at all. `recurrent_titans` below writes that rule a second
time, in a form deliberately unlike both the layer and clbench/nested/hope/reference.py:
the paper's M layout (M = S^T, Eq. 88: M_t = M_{t-1} (alpha I - eta k k^T) - eta grad),
hand-derived gradients instead of autograd, library conv and RMSNorm. Only the layer's
parameter tensors and option fields are read. Float64 at tiny shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .test_hope_titans import inputs, make_layer

SLOTS = ("k", "v", "q", "eta", "alpha")


def memory_weights(bank, groups: slice, batch: int, memory: str) -> dict[str, torch.Tensor]:
    """One memory's initial weights in M layout, [B, H, out, in]."""
    def m_layout(p):
        return p[groups].transpose(-1, -2).unsqueeze(0).expand(batch, -1, -1, -1).clone()

    if memory == "linear":
        return {"M": m_layout(bank.s0)}
    return {"W2": m_layout(bank.s2), "W1": m_layout(bank.s1)}


def apply(w: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """M(z) for z [B, H, d]: M z, or z + W1 silu(W2 z)."""
    if "M" in w:
        return torch.einsum("bhvk,bhk->bhv", w["M"], z)
    return z + torch.einsum("bhde,bhe->bhd", w["W1"], F.silu(torch.einsum("bhed,bhd->bhe", w["W2"], z)))


def online_steps(w, k, v_hat, eta, opts):
    """The step of every matrix without retention or momentum: -eta [DGD term] - eta grad,
    the gradient of 1/2 ||M(k) - v_hat||^2 derived by hand at the current weights."""
    e = eta[..., None, None]
    outer = lambda a, b: a[..., :, None] * b[..., None, :]  # noqa: E731 (a b^T per batch, head)
    if "M" in w:
        err = torch.einsum("bhvk,bhk->bhv", w["M"], k) - v_hat
        dgd = outer(torch.einsum("bhvk,bhk->bhv", w["M"], k), k) if opts.dgd else 0
        return {"M": -e * dgd - e * outer(err, k)}
    pre = torch.einsum("bhed,bhd->bhe", w["W2"], k)
    a = F.silu(pre)
    err = k + torch.einsum("bhde,bhe->bhd", w["W1"], a) - v_hat
    sig = torch.sigmoid(pre)
    back = torch.einsum("bhde,bhd->bhe", w["W1"], err) * sig * (1 + pre * (1 - sig))  # through silu
    dgd2 = outer(torch.einsum("bhed,bhd->bhe", w["W2"], k), k) if opts.dgd else 0
    e1 = e if opts.w1_step == "plain" else e / a.pow(2).sum(-1).clamp_min(1.0)[..., None, None]
    return {"W2": -e * dgd2 - e * outer(back, k), "W1": -e1 * outer(err, a)}


def recurrent_titans(layer, x: torch.Tensor) -> torch.Tensor:
    opts, (b, t, d) = layer.options, x.shape
    h, dh = opts.heads, d // opts.heads
    window = layer.conv.conv.weight.shape[-1]
    y = F.pad(F.linear(x, layer.proj.weight).transpose(1, 2), (window - 1, 0))
    z = F.silu(F.conv1d(y, layer.conv.conv.weight, layer.conv.conv.bias, groups=y.shape[1]))
    z = z.transpose(1, 2).reshape(b, t, 5, h, dh)
    flags = {"k": opts.adaptive_k, "v": opts.adaptive_v, "q": opts.adaptive_q, "eta": True, "alpha": True}
    adaptive = [p for p in SLOTS if flags[p]]
    weights = {p: memory_weights(layer.proj_memory, slice(j * h, (j + 1) * h), b, opts.memory)
               for j, p in enumerate(adaptive)}
    weights["mem"] = memory_weights(layer.main_memory, slice(None), b, opts.memory)
    momenta = {m: {n: torch.zeros_like(w) for n, w in ws.items()} for m, ws in weights.items()}
    inner = opts.momentum and opts.momentum_form == "inner"
    if inner:
        gates = {p: torch.sigmoid(layer.proj_memory.momentum_logit[j * h:(j + 1) * h])
                 for j, p in enumerate(adaptive)}
        gates["mem"] = torch.sigmoid(layer.main_memory.momentum_logit)
    elif opts.momentum:
        mu_t = torch.sigmoid(F.linear(x, layer.momentum_gate.weight, layer.momentum_gate.bias)).clamp_min(1e-6)
    outputs = []
    for i in range(t):
        made = {p: apply(weights[p], z[:, i, j]) if p in adaptive else z[:, i, j] for j, p in enumerate(SLOTS)}
        k, q = F.normalize(made["k"], dim=-1), F.normalize(made["q"], dim=-1)
        v = F.normalize(made["v"], dim=-1) if opts.normalize_v else made["v"]
        eta = opts.eta_max * torch.sigmoid(torch.einsum("bhd,hd->bh", made["eta"], layer.eta_readout) + layer.eta_bias)
        alpha = torch.ones_like(eta)
        if opts.retention:
            alpha = torch.sigmoid(torch.einsum("bhd,hd->bh", made["alpha"], layer.alpha_readout)
                                  + layer.alpha_bias).clamp_min(1e-6)
        a = alpha[..., None, None]
        outputs.append(apply(weights["mem"], q))  # read before write
        for m, w in weights.items():
            steps = online_steps(w, k, apply(w, v), eta, opts)  # v_hat = M(v) at the current state
            for n, step in steps.items():
                if not opts.momentum:
                    w[n] = a * w[n] + step
                    continue
                mu = (gates[m] if inner else mu_t[:, i])[..., None, None]
                if inner:
                    momenta[m][n] = mu * momenta[m][n] + (a - 1) * w[n] + step
                    w[n] = w[n] + momenta[m][n]
                else:
                    momenta[m][n] = mu * momenta[m][n] + step
                    w[n] = a * w[n] + momenta[m][n]
    o = F.rms_norm(torch.stack(outputs, dim=1), (dh,), layer.out_norm.weight, layer.out_norm.eps)
    gate = F.silu(F.linear(x, layer.gate.weight, layer.gate.bias))
    return F.linear(o.reshape(b, t, d) * gate, layer.out_proj.weight, layer.out_proj.bias)


CASES = [
    {"memory": "linear", "momentum": False},
    {"memory": "mlp", "momentum": False},
    {"memory": "linear"},  # Titans-form momentum (the default)
    {"memory": "mlp"},
    {"memory": "linear", "momentum_form": "inner"},
    {"memory": "mlp", "momentum_form": "inner"},
    {"memory": "linear", "dgd": False, "retention": False},
    {"memory": "mlp", "dgd": False, "w1_step": "plain", "normalize_v": False},
    {"memory": "mlp", "adaptive_q": True, "adaptive_k": False},
]


def case_id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("options", CASES, ids=case_id)
def test_chunk_size_one_is_the_fully_recurrent_rule(options):
    layer, x = make_layer(chunk_other=1, chunk_mem=1, **options), inputs(t=9)
    with torch.no_grad():
        chunked, recurrent = layer(x), recurrent_titans(layer, x)
    assert torch.allclose(chunked, recurrent, atol=1e-10, rtol=0), (chunked - recurrent).abs().max()


@pytest.mark.parametrize("options", CASES[:4], ids=case_id)
def test_larger_chunks_are_not_the_recurrent_rule(options):
    # Guards the test above against a vacuous rule: chunk-start gradients are an
    # approximation, so with chunks of 4 the layer must leave the online rule.
    layer, x = make_layer(chunk_other=4, chunk_mem=4, **options), inputs(t=9)
    with torch.no_grad():
        gap = (layer(x) - recurrent_titans(layer, x)).abs()
    assert gap[:, 0].max() < 1e-12  # token 0 reads the initial state either way
    assert gap[:, 2:].max() > 1e-6
