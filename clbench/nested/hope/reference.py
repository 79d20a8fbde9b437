"""Token-by-token reference of the self-modifying Titans layer: the exact semantics, slowly.

Independent of the layer on purpose: it reads the layer's parameter tensors and option
fields and nothing else (no method of the layer, memory.py or clbench.kernels runs), so a
bug in the chunked path cannot hide in code both share. Per token t (S = M^T layout, every
memory m of one head an explicit weight matrix, or two for the MLP memory):

    z_t = SiLU(causal depthwise conv(W_proj x))_t, split into slots k, v, q, eta, alpha
    p_t = M_{p,snap}(z_{p,t}) for an adaptive projection p, else z_{p,t}
    k, q = l2norm; v = l2norm (normalize_v) or raw
    eta = eta_max sigmoid(<r_eta, p_eta> + b_eta); alpha = sigmoid(<r_alpha, p_alpha> + b_alpha)
          floored at 1e-6, or 1 without retention
    o_t = M_{mem,t-1}(q_t)                                             (read before write)
    every memory m: v_hat = M_{m,snap}(v_t); g = d/dW 1/2 ||M_W(k_t) - v_hat||^2 at W = snap
    (autograd), step = -eta k k^T S_{t-1} [DGD, input-side matrix only] - eta g
      no momentum:   S_t = alpha S_{t-1} + step
      titans:        m_t = mu_t m_{t-1} + step,                    S_t = alpha S_{t-1} + m_t
      inner:         m_t = mu m_{t-1} + (alpha - 1) S_{t-1} + step, S_t = S_{t-1} + m_t

"snap" is the memory's state at the start of t's chunk (chunk_other for the projection
memories, chunk_mem for the main one). An MLP memory M(z) = z + W1 silu(W2 z) takes the DGD
term on W2 (keys k) and a plain step on W1 with eta / max(1, ||silu(W2_snap k)||^2)
(w1_step="normalized") or eta. Then per-head RMSNorm, SiLU gate of x, output projection.

Tests compare it with the chunked layer in float64 (tests/test_hope_titans.py);
benchmarks/hope_chunked.py times both. Values only (writes are never differentiated).
"""

from __future__ import annotations

import torch

# The layer's projection slots, in the order its input projection lays them out.
SLOTS = ("k", "v", "q", "eta", "alpha")


def _silu(z: torch.Tensor) -> torch.Tensor:
    return z * torch.sigmoid(z)


def _l2norm(z: torch.Tensor) -> torch.Tensor:
    # Same floor as F.normalize (eps 1e-12), written out.
    return z / torch.sqrt((z * z).sum(-1, keepdim=True)).clamp_min(1e-12)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = torch.einsum("...i,oi->...o", x, weight)
    return y if bias is None else y + bias


def _slot_inputs(layer, x: torch.Tensor) -> torch.Tensor:
    """[B, T, 5, H, dh]: input projection, causal depthwise conv (explicit shifts), SiLU."""
    b, t, d = x.shape
    y = _linear(x, layer.proj.weight)  # [B, T, 5d]
    weight, bias = layer.conv.conv.weight[:, 0], layer.conv.conv.bias  # [5d, W], [5d]
    window = weight.shape[-1]
    out = bias.expand_as(y).clone()
    for j in range(window):
        # Tap j of the cross-correlation sees the input (window - 1 - j) steps back; the
        # causal left padding makes it zero before the sequence starts.
        lag = window - 1 - j
        if lag < t:
            out[:, lag:] += weight[:, j] * y[:, : t - lag]
    return _silu(out).reshape(b, t, len(SLOTS), layer.options.heads, d // layer.options.heads)


def _read(weights: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """One memory's function on z [B, H, d]; weights [B, H, ...] ("S", or "S2" and "S1")."""
    if "S" in weights:
        return torch.einsum("bhk,bhkv->bhv", z, weights["S"])
    hidden = _silu(torch.einsum("bhd,bhde->bhe", z, weights["S2"]))
    return z + torch.einsum("bhe,bhed->bhd", hidden, weights["S1"])


def _inner_gradient(snapshot, k, v_hat):
    """d/dW of 1/2 ||M_W(k) - v_hat||^2 at the snapshot. The loss is summed over batch and
    heads, but every (batch, head) owns its weights, so each gets exactly its own gradient."""
    with torch.enable_grad():
        leaves = {name: w.detach().clone().requires_grad_(True) for name, w in snapshot.items()}
        loss = 0.5 * (_read(leaves, k.detach()) - v_hat.detach()).pow(2).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def _initial_weights(layer, bank_name: str, groups: slice, batch: int):
    """Meta-learned initial weights (plus the carried change, if the layer holds one) of one
    memory, [B, H, ...] each; momentum buffers start at zero (plus their carried change)."""
    bank = layer.proj_memory if bank_name == "proj" else layer.main_memory
    params = {"S": "s0"} if layer.options.memory == "linear" else {"S2": "s2", "S1": "s1"}
    carried = layer.carried[bank_name] if layer.carried is not None else None
    state_key = {"S": "s", "S2": "s2", "S1": "s1"}
    momentum_key = {"S": "m", "S2": "m2", "S1": "m1"}
    weights, momenta = {}, {}
    for name, param in params.items():
        w = getattr(bank, param)[groups].unsqueeze(0).expand(batch, -1, -1, -1).clone()
        m = torch.zeros_like(w)
        if carried is not None:
            w = w + carried[state_key[name]][:, groups]
            if momentum_key[name] in carried:
                m = m + carried[momentum_key[name]][:, groups]
        weights[name], momenta[name] = w, m
    return weights, momenta


def _write(layer, weights, momenta, grads, snapshot, k, eta, alpha, mu):
    """One token of the inner rule on every weight matrix of one memory; returns new dicts."""
    opts = layer.options
    new_w, new_m = {}, {}
    for name, s in weights.items():
        step_size = eta  # [B, H]
        if name == "S1" and opts.w1_step == "normalized":
            keys1 = _silu(torch.einsum("bhd,bhde->bhe", k, snapshot["S2"]))  # W1's keys at the snapshot
            step_size = eta / (keys1 * keys1).sum(-1).clamp_min(1.0)
        e = step_size[..., None, None]
        step = -e * grads[name]
        if opts.dgd and name in ("S", "S2"):  # the DGD factor sits on the matrix that reads k
            step = step - e * torch.einsum("bhk,bhj,bhjv->bhkv", k, k, s)
        a = alpha[..., None, None]
        if not opts.momentum:
            new_w[name] = a * s + step
        elif opts.momentum_form == "titans":  # forget gate outside the momentum
            new_m[name] = mu[..., None, None] * momenta[name] + step
            new_w[name] = a * s + new_m[name]
        else:  # "inner": retention inside the momentum, one static gate per memory
            new_m[name] = mu[..., None, None] * momenta[name] + (a - 1) * s + step
            new_w[name] = s + new_m[name]
    return new_w, (new_m if opts.momentum else momenta)


def _readout(layer, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-head RMSNorm of o [B, T, H, dh], SiLU gate from x, output projection."""
    norm = layer.out_norm
    eps = norm.eps if norm.eps is not None else torch.finfo(o.dtype).eps
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * norm.weight
    gate = _silu(_linear(x, layer.gate.weight, layer.gate.bias))
    return _linear(o.reshape(x.shape) * gate, layer.out_proj.weight, layer.out_proj.bias)


def naive_titans(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for x [B, T, d], token by token (see the module docstring)."""
    opts, (b, t, _) = layer.options, x.shape
    h = opts.heads
    flags = {"k": opts.adaptive_k, "v": opts.adaptive_v, "q": opts.adaptive_q, "eta": True, "alpha": True}
    adaptive = [p for p in SLOTS if flags[p]]  # the projection bank stacks them in this order
    z = _slot_inputs(layer, x)
    weights, momenta = {}, {}
    for j, p in enumerate(adaptive):
        weights[p], momenta[p] = _initial_weights(layer, "proj", slice(j * h, (j + 1) * h), b)
    weights["mem"], momenta["mem"] = _initial_weights(layer, "main", slice(None), b)
    names = [*adaptive, "mem"]

    static_mu = {}
    if opts.momentum and opts.momentum_form == "inner":
        for j, p in enumerate(adaptive):
            static_mu[p] = torch.sigmoid(layer.proj_memory.momentum_logit[j * h:(j + 1) * h]).expand(b, h)
        static_mu["mem"] = torch.sigmoid(layer.main_memory.momentum_logit).expand(b, h)
    titans_mu = None
    if opts.momentum and opts.momentum_form == "titans":  # [B, T, H] from the layer input
        gate = layer.momentum_gate
        titans_mu = torch.sigmoid(_linear(x, gate.weight, gate.bias)).clamp_min(1e-6)

    snapshots, outputs = {}, []
    for step in range(t):
        for m in names:
            period = opts.chunk_mem if m == "mem" else opts.chunk_other
            if step % period == 0:
                snapshots[m] = {name: w.clone() for name, w in weights[m].items()}
        made = {p: (_read(snapshots[p], z[:, step, i]) if p in adaptive else z[:, step, i])
                for i, p in enumerate(SLOTS)}
        k, q = _l2norm(made["k"]), _l2norm(made["q"])
        v = _l2norm(made["v"]) if opts.normalize_v else made["v"]
        eta = opts.eta_max * torch.sigmoid((made["eta"] * layer.eta_readout).sum(-1) + layer.eta_bias)
        if opts.retention:
            alpha = torch.sigmoid((made["alpha"] * layer.alpha_readout).sum(-1) + layer.alpha_bias).clamp_min(1e-6)
        else:
            alpha = torch.ones_like(eta)
        outputs.append(_read(weights["mem"], q))  # read before write (Eq. 94)
        for m in names:
            v_hat = _read(snapshots[m], v)  # the memory's own target (Eq. 84)
            grads = _inner_gradient(snapshots[m], k, v_hat)
            mu = titans_mu[:, step] if titans_mu is not None else static_mu.get(m)
            weights[m], momenta[m] = _write(layer, weights[m], momenta[m], grads, snapshots[m], k, eta, alpha, mu)
    return _readout(layer, torch.stack(outputs, dim=1), x)
