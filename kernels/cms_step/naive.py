"""Per-tensor reference for the CMS accumulate-and-step (kernel K3): the ground truth.

Per tensor i of a level: acc_i += scale * grad_i; on a due step the level's update rule
runs once on g_i = acc_i * inv_count (the chunk's mean when inv_count = 1 / #gradients,
its sum when 1), then acc_i is zeroed. The rules follow torch.optim's single-tensor code
line by line (same operations in the same order), so this path *is* torch.optim.SGD /
Adam / AdamW stepping on the accumulated gradient.

`Rule` (the hyperparameters) and `adam_scalars` live here because they define the
semantics that `chunk.py` and `triton.py` reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

RULES = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class Rule:
    """A level's update rule, with torch.optim's meaning of every field.

    name: "sgd" (momentum, L2 weight decay in the gradient), "adam" (L2 weight decay in
    the gradient) or "adamw" (decoupled weight decay: p *= 1 - lr * weight_decay).
    No nesterov, dampening, amsgrad or maximize: the CMS runs use none of them.
    """

    name: str
    lr: float
    momentum: float = 0.0  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw only
    eps: float = 1e-8  # adam / adamw only
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.name not in RULES:
            raise ValueError(
                f"unknown update rule {self.name!r}; accepted: {', '.join(map(repr, RULES))}"
            )
        # torch.optim's own range checks; fields a rule does not use are still checked.
        if min(self.lr, self.momentum, self.weight_decay) < 0:
            raise ValueError(f"need lr, momentum, weight_decay >= 0; got {self}")
        if not all(0 <= b < 1 for b in self.betas) or self.eps < 0:
            raise ValueError(f"need 0 <= betas < 1 and eps >= 0; got {self}")

    @property
    def state_names(self) -> tuple[str, ...]:
        """Per-element optimizer buffers, named as in torch.optim's state."""
        if self.name == "sgd":
            return ("momentum_buffer",) if self.momentum else ()
        return ("exp_avg", "exp_avg_sq")


def adam_scalars(rule: Rule, step: int) -> tuple[float, float]:
    """(-step_size, sqrt(bias_correction2)) for update number `step` (1-based).

    Computed in Python floats (double), as torch.optim does, so every path and every
    device sees the same two scalars; the kernel never evaluates beta ** step itself.
    """
    beta1, beta2 = rule.betas
    step_size = rule.lr / (1 - beta1**step)
    return -step_size, (1 - beta2**step) ** 0.5


def cms_step_naive(
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
    """One accumulate (and, if `due`, update) over a level's tensors, in place.

    grads[i] None: nothing accumulated for tensor i this step. seen[i] False (default
    all True): tensor i got no gradient during the whole chunk, so a due step leaves it
    and its optimizer state alone (torch.optim skips a parameter whose .grad is None).
    steps[i]: the update number this due step is for tensor i (1 for its first update;
    Adam's bias correction). state: the rule's `state_names` -> one buffer per tensor.
    """
    for i, (p, a) in enumerate(zip(params, acc, strict=True)):
        if grads[i] is not None:
            a.add_(grads[i], alpha=scale)
        if not due or (seen is not None and not seen[i]):
            continue
        if inv_count != 1:
            a.mul_(inv_count)
        _update_one(p, a, [state[name][i] for name in rule.state_names], rule, steps[i])
        a.zero_()


def _update_one(p: torch.Tensor, g: torch.Tensor, bufs: list, rule: Rule, step: int) -> None:
    wd = rule.weight_decay
    if rule.name == "sgd":
        if wd:
            g = g.add(p, alpha=wd)
        if rule.momentum:
            # torch.optim starts the buffer as a copy of g; ours starts at 0, and
            # 0 * momentum + g == g exactly, so the first step agrees.
            g = bufs[0].mul_(rule.momentum).add_(g)
        p.add_(g, alpha=-rule.lr)
        return
    if wd and rule.name == "adamw":
        p.mul_(1 - rule.lr * wd)
    elif wd:
        g = g.add(p, alpha=wd)
    beta1, beta2 = rule.betas
    exp_avg, exp_avg_sq = bufs
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    neg_step_size, bc2_sqrt = adam_scalars(rule, step)
    denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(rule.eps)
    p.addcdiv_(exp_avg, denom, value=neg_step_size)
