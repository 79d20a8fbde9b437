"""Small pieces every deep optimizer shares."""

from __future__ import annotations

import torch


def run_closure(closure):
    """torch.optim's closure convention: re-evaluate the loss with gradients on."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def check_momentum(momentum: float | None) -> None:
    """`None` means "take train.momentum, or 0.9"; otherwise 0 <= momentum < 1."""
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum} is out of range; accepted: 0 <= momentum < 1, or None")
