"""Multi-tensor PyTorch reference for the CMS accumulate-and-step (the "reference" path).

Same semantics as `naive.py`, but every stage is one `torch._foreach_*` call over the
level's tensors, mirroring torch.optim's multi-tensor (foreach) SGD and Adam. The
accumulator and optimizer buffers passed in are views into one flat, contiguous buffer
per level (see `FlatLevel`), so the foreach ops work on the caller's gradient list as
is: no gather. On CUDA each stage is one multi-tensor launch; a due Adam step is about
ten passes over the level's memory, which is what the Triton kernel fuses into one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .naive import Rule, adam_scalars


def cms_step_chunk(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    acc: Sequence[torch.Tensor],
    state: dict[str, Sequence[torch.Tensor]],
    rule: Rule,
    *,
    due: bool,
    steps: Sequence[int],
    scale: float = 1.0,
    inv_count: float = 1.0,
    seen: Sequence[bool] | None = None,
) -> None:
    """Arguments and semantics as `cms_step_naive`."""
    present = [i for i, g in enumerate(grads) if g is not None]
    if present:
        torch._foreach_add_([acc[i] for i in present], [grads[i] for i in present], alpha=scale)
    if not due:
        return
    live = [i for i in range(len(acc)) if seen is None or seen[i]]
    if not live:
        return
    live_acc = [acc[i] for i in live]
    if inv_count != 1:
        torch._foreach_mul_(live_acc, inv_count)
    apply_rule(
        [params[i] for i in live],
        live_acc,
        {name: [state[name][i] for i in live] for name in rule.state_names},
        rule,
        [steps[i] for i in live],
    )
    torch._foreach_zero_(live_acc)


def apply_rule(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    state: dict[str, list[torch.Tensor]],
    rule: Rule,
    steps: list[int],
) -> None:
    """One torch.optim-style update of `params` from `grads` (not modified)."""
    wd = rule.weight_decay
    if rule.name == "sgd":
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if rule.momentum:
            bufs = state["momentum_buffer"]  # starts at 0: see naive._update_one
            torch._foreach_mul_(bufs, rule.momentum)
            torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(params, grads, alpha=-rule.lr)
        return
    if wd and rule.name == "adamw":
        torch._foreach_mul_(params, 1 - rule.lr * wd)
    elif wd:
        grads = torch._foreach_add(grads, params, alpha=wd)
    beta1, beta2 = rule.betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
    # Per-tensor scalars: a tensor that skipped updates (no gradient in some chunks) has
    # its own step count, as in torch.optim's per-parameter `step`.
    neg_step_sizes, bc2_sqrts = zip(*(adam_scalars(rule, s) for s in steps), strict=True)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, list(bc2_sqrts))
    torch._foreach_add_(denom, rule.eps)
    torch._foreach_addcdiv_(params, exp_avg, denom, list(neg_step_sizes))
