"""Token-by-token reference of the self-modifying Titans layer: the exact semantics, slowly.

Written independently of memory.py and the chunked op on purpose: one memory at a time,
explicit weight matrices, the inner gradient taken by autograd at the chunk-start
snapshot, and the update rule applied token by token exactly as nested_learning.md §6.2
writes it (S = M^T layout):

    S_t = alpha_t S_{t-1} - eta_t k_t k_t^T S_{t-1} [DGD] - eta_t grad L(S_snapshot; k_t, v_hat_t)
    Titans-form momentum: m_t = mu_t m_{t-1} + (step without retention), S_t = alpha_t S_{t-1} + m_t
    inner-form momentum: m_t = mu m_{t-1} + (S_t^{plain} - S_{t-1}),  S_t = S_{t-1} + m_t

Only the parameter-free plumbing (input projection + conv, eta/alpha readouts, output
path) is shared with the layer. Tests compare the two in float64 (tests/test_hope_titans.py);
benchmarks/hope_chunked.py times them. Values only: not for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.nested.hope.memory import LinearMemory
from clbench.nested.hope.titans import PROJECTIONS, SelfModifyingTitans


def _apply(weights: dict[str, torch.Tensor], z: torch.Tensor, linear: bool) -> torch.Tensor:
    """One memory's function on z [B, H, d] with weights of shape [B, H, ...]."""
    if linear:
        return torch.einsum("bhk,bhkv->bhv", z, weights["s"])
    hidden = F.silu(torch.einsum("bhd,bhde->bhe", z, weights["s2"]))
    return z + torch.einsum("bhe,bhed->bhd", hidden, weights["s1"])


def _inner_grads(snapshot, k, target, linear: bool):
    """d/dW of 1/2 ||M_W(k) - target||^2 at the snapshot weights, per (batch, head)."""
    with torch.enable_grad():
        leaves = {name: w.detach().clone().requires_grad_(True) for name, w in snapshot.items()}
        loss = 0.5 * (_apply(leaves, k.detach(), linear) - target.detach()).pow(2).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def _weights(bank, groups: slice, batch: int) -> dict[str, torch.Tensor]:
    """One memory's initial weight matrices, [B, H, ...], named as in the state dicts."""
    names = {"s0": "s", "s2": "s2", "s1": "s1"}
    return {
        names[w]: p[groups].unsqueeze(0).expand(batch, -1, -1, -1).clone()
        for w, p in bank.named_parameters() if w in names
    }


def _step(weights, momenta, grads, k, eta, alpha, mu, opts, w1_keys=None):
    """One token of the update rule for every weight matrix of one memory."""
    a = alpha[..., None, None]
    new_w, new_m = {}, {}
    for name, s in weights.items():
        step = eta
        if name == "s1" and opts.w1_step == "normalized":  # memory.w1_step, written out again here
            step = eta / torch.clamp(torch.sum(w1_keys * w1_keys, dim=-1), min=1.0)
        e = step[..., None, None]
        change = -e * grads[name]  # the step without retention
        if opts.dgd and name in ("s", "s2"):  # the input-side matrix (keys k) carries the DGD factor
            change = change - e * k[..., :, None] * torch.einsum("bhk,bhkv->bhv", k, s)[..., None, :]
        if mu is None:
            new_w[name] = a * s + change
        elif opts.momentum_form == "titans":  # momentum over the step, forget gate outside
            new_m[name] = mu[..., None, None] * momenta[name] + change
            new_w[name] = a * s + new_m[name]
        else:  # inner: retention inside the momentum
            new_m[name] = mu[..., None, None] * momenta[name] + (a - 1) * s + change
            new_w[name] = s + new_m[name]
    return new_w, new_m


def naive_titans(layer: SelfModifyingTitans, x: torch.Tensor) -> torch.Tensor:
    opts, (b, t, _) = layer.options, x.shape
    h = layer.heads
    linear = isinstance(layer.main_memory, LinearMemory)
    z = layer.projected_inputs(x)
    mu = {}
    inner = opts.momentum and opts.momentum_form == "inner"
    # Unpack the banks into one weight dict per memory: [B, H, ...] each.
    memories: dict[str, dict[str, torch.Tensor]] = {}
    for j, name in enumerate(opts.adaptive):
        memories[name] = _weights(layer.proj_memory, slice(j * h, (j + 1) * h), b)
        if inner:
            mu[name] = torch.sigmoid(layer.proj_memory.momentum_logit[j * h:(j + 1) * h]).expand(b, -1)
    memories["mem"] = _weights(layer.main_memory, slice(None), b)
    if inner:
        mu["mem"] = torch.sigmoid(layer.main_memory.momentum_logit).expand(b, -1)
    titans_mu = None
    if opts.momentum and not inner:  # per token and head: [B, T, H]
        titans_mu = torch.sigmoid(x @ layer.momentum_gate.weight.T + layer.momentum_gate.bias).clamp_min(1e-6)
    momenta = {m: {w: torch.zeros_like(s) for w, s in ws.items()} for m, ws in memories.items()}
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    outputs = []
    for step in range(t):
        proj_names = list(opts.adaptive)
        if step % opts.chunk_other == 0:
            snapshots.update({m: dict(memories[m]) for m in proj_names})
        if step % opts.chunk_mem == 0:
            snapshots["mem"] = dict(memories["mem"])
        made = {
            p: _apply(snapshots[p], z[:, step, i], linear) if p in proj_names else z[:, step, i]
            for i, p in enumerate(PROJECTIONS)
        }
        k, q = F.normalize(made["k"], dim=-1), F.normalize(made["q"], dim=-1)
        v = F.normalize(made["v"], dim=-1) if opts.normalize_v else made["v"]
        if titans_mu is not None:
            mu = dict.fromkeys([*opts.adaptive, "mem"], titans_mu[:, step])
        eta, alpha = layer.rates(made["eta"][:, None], made["alpha"][:, None])
        eta, alpha = eta[:, 0], alpha[:, 0]
        outputs.append(_apply(memories["mem"], q, linear))  # read before write (Eq. 94)
        for m in [*proj_names, "mem"]:
            target = _apply(snapshots[m], v, linear)  # self-generated value (Eq. 84)
            grads = _inner_grads(snapshots[m], k, target, linear)
            w1_keys = None if linear else F.silu(torch.einsum("bhd,bhde->bhe", k, snapshots[m]["s2"]))
            memories[m], new_m = _step(memories[m], momenta[m], grads, k, eta, alpha, mu.get(m), opts, w1_keys)
            if opts.momentum:
                momenta[m] = new_m
    return layer.output(torch.stack(outputs, dim=1), x)
