"""Batched evaluation of the metric matrix (accuracy, or bits per character for LM streams)
over cached test tensors.

Avalanche's eval loop runs a dozen metric objects per minibatch; a row of the
matrix only needs argmax counts, so we evaluate each test experience in large
batches straight from its tensors. Task labels are passed for multi-head
(task-IL) models, exactly as Avalanche's `avalanche_forward` would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from avalanche.models.utils import avalanche_forward


@torch.no_grad()
def hits(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: int | torch.Tensor, *, device,
         batch_size: int) -> torch.Tensor:
    """Whether each sample's argmax prediction is its label (bool, on the CPU). `task` is the
    experience's task label, or one label per sample (clbench.anytime scores several tasks at once)."""
    out = []
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        tb = (torch.full((len(xb),), task, dtype=torch.long) if isinstance(task, int)
              else task[start:start + batch_size]).to(device)
        out.append(avalanche_forward(model, xb, tb).argmax(1).cpu() == y[start:start + batch_size])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: int, *, device, batch_size: int) -> float:
    return hits(model, x, y, task, device=device, batch_size=batch_size).sum().item() / max(len(y), 1)


@torch.no_grad()
def bits_per_token(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: int, *, device, batch_size: int) -> float:
    """Mean next-token cross-entropy in bits over every target position (bits per
    character for a character stream). Logits [B, L, V], targets y [B, L]."""
    total_nats, count = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        yb = y[start:start + batch_size].to(device, non_blocking=True)
        tb = torch.full((len(xb),), task, dtype=torch.long, device=device)
        logits = avalanche_forward(model, xb, tb)
        total_nats += F.cross_entropy(logits.flatten(0, -2).float(), yb.flatten(), reduction="sum").item()
        count += yb.numel()
    return total_nats / max(count, 1) / math.log(2)


METRICS = {"accuracy": accuracy, "bpc": bits_per_token}


def evaluate_row(
    model: torch.nn.Module, test_experiences, *, device, batch_size: int, metric: str = "accuracy"
) -> list[float]:
    """Metric on every test experience; restores the model's train/eval mode."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    measure = METRICS[metric]
    was_training = model.training
    model.eval()
    try:
        return [measure(model, e.x, e.y, e.task, device=device, batch_size=batch_size) for e in test_experiences]
    finally:
        model.train(was_training)
