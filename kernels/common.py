"""Input checks shared by the ops' `check_inputs` (dgd_rule, mlp_memory, dmgd_mlp).

Torch only: every implementation, the Triton-free references included, runs these.
"""

from __future__ import annotations

import torch


def check_same_float_tensors(named: dict[str, object]) -> None:
    """ValueError naming the argument unless every value is a floating-point tensor with the
    dtype and device of the first one (the op's leading input, named in the message)."""
    first_name, first = next(iter(named.items()))
    for name, x in named.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; got {type(x).__name__}")
        if x.dtype != first.dtype or x.device != first.device:
            raise ValueError(
                f"{name} has dtype {x.dtype} on {x.device}; expected {first.dtype} on "
                f"{first.device} (as {first_name})"
            )


def check_finite_and_gates(named: dict[str, torch.Tensor]) -> None:
    """ValueError unless every tensor is finite, named["alpha"] lies in (0, 1] and
    named["eta"] >= 0 (the gates of the DGD rule; see dgd_rule/checks.py for why)."""
    for name, x in named.items():
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")
    alpha, eta = named["alpha"], named["eta"]
    _check_range("alpha", alpha, (alpha <= 0) | (alpha > 1), "in (0, 1]")
    _check_range("eta", eta, eta < 0, ">= 0")


def _check_range(name: str, x: torch.Tensor, bad: torch.Tensor, rule: str) -> None:
    if bad.any():
        first = x[bad][0].item()
        raise ValueError(f"{name} must be {rule}; got {first:g} ({int(bad.sum())} bad entries)")
