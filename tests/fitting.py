"""Shared by the tests that check a model can fit a tiny fixed batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_fixed_batch(model, x, y, steps: int, lr: float = 3e-3) -> tuple[float, float]:
    """Full-batch AdamW on (x, y) for `steps` steps: (first loss, last loss)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]
