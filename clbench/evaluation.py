"""Batched evaluation of the accuracy matrix over cached test tensors.

Avalanche's eval loop runs a dozen metric objects per minibatch; a row of the
matrix only needs argmax counts, so we evaluate each test experience in large
batches straight from its tensors. Task labels are passed for multi-head
(task-IL) models, exactly as Avalanche's `avalanche_forward` would.
"""

from __future__ import annotations

import torch
from avalanche.models.utils import avalanche_forward


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: int, *, device, batch_size: int) -> float:
    correct = 0
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        tb = torch.full((len(xb),), task, dtype=torch.long, device=device)
        logits = avalanche_forward(model, xb, tb)
        correct += (logits.argmax(1).cpu() == y[start:start + batch_size]).sum().item()
    return correct / max(len(y), 1)


def evaluate_row(model: torch.nn.Module, test_experiences, *, device, batch_size: int) -> list[float]:
    """Metric on every test experience; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        return [accuracy(model, e.x, e.y, e.task, device=device, batch_size=batch_size) for e in test_experiences]
    finally:
        model.train(was_training)
