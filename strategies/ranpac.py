"""RanPAC (McDonnell et al., NeurIPS 2023): random projection + ridge regression on frozen features.

Phase 2 of the paper only: the backbone stays frozen (the paper's phase 1,
parameter-efficient adaptation on the first session, is not done), so the
input x (flattened) is the feature vector. With a fixed Gaussian projection
W [d, M] (seeded by the run's seed) and h = relu(x W):

    G += h^T h,   C += h^T Y   (Y one-hot over all classes)   after every sample seen
    W_out = (G + lambda I)^-1 C,   scores = h W_out

in float64. `ridge="auto"` picks lambda per experience as the paper's code
does: over 10^-8 .. 10^13, fit on 80% of the current experience's samples and
keep the lambda with the lowest mean squared error to the one-hot targets on
the other 20% (held out by a permutation seeded by the run's seed and the
experience index). The final W_out then uses all data seen so far with that
lambda. See docs/closed_form.md for the exact procedure and its cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clbench.closed_form import ClosedFormHead, closed_form_template
from clbench.registry import register_strategy

RIDGE_GRID = tuple(10.0 ** k for k in range(-8, 14))  # the grid of the paper's code (np.arange(-8, 14))
FIT_FRACTION = 0.8


def holdout_mask(n_samples: int, seed: int, experience: int) -> torch.Tensor:
    """True for the samples (by position in the experience) held out to select lambda."""
    n_fit = int(n_samples * FIT_FRACTION)
    order = np.random.default_rng([seed, experience]).permutation(n_samples)
    mask = torch.zeros(n_samples, dtype=torch.bool)
    mask[torch.from_numpy(order[n_fit:])] = True
    return mask


def select_ridge(g_fit: torch.Tensor, c_fit: torch.Tensor, h_val: torch.Tensor, y_val: torch.Tensor,
                 grid=RIDGE_GRID) -> tuple[float, list[float]]:
    """The grid value minimising the held-out MSE of (G_fit + lambda I)^-1 C_fit, and every loss.

    One eigendecomposition G_fit = V diag(s) V^T serves the whole grid:
    (G_fit + lambda I)^-1 = V diag(1 / (s + lambda)) V^T, the same solution as one
    solve per lambda at a fraction of the cost.
    """
    s, v = torch.linalg.eigh(g_fit)
    s = s.clamp(min=0)  # G is PSD; rounding can leave eigenvalues at -1e-12
    a, b = h_val @ v, v.T @ c_fit
    losses = [float(((a @ (b / (s + lam).unsqueeze(1))) - y_val).pow(2).mean()) for lam in grid]
    return grid[int(np.argmin(losses))], losses


class RanPACHead(ClosedFormHead):
    def __init__(self, in_features: int, n_classes: int, projection_dim: int, ridge, seed: int):
        super().__init__(in_features, n_classes)
        self.ridge, self.seed = ridge, seed
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(in_features, projection_dim, generator=gen, dtype=torch.float64))
        m = projection_dim
        self.register_buffer("gram", torch.zeros(m, m, dtype=torch.float64))
        self.register_buffer("targets", torch.zeros(m, n_classes, dtype=torch.float64))  # C = sum h^T Y
        self.register_buffer("weight", torch.zeros(m, n_classes, dtype=torch.float64))  # W_out
        self.chosen_ridges: list[float] = []  # lambda used after each experience
        self.ridge_losses: list[float] = []  # held-out MSE per grid value, last selection
        self._fold = None

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z @ self.projection)

    def begin_experience(self, n_samples: int) -> None:
        if self.ridge != "auto":
            return
        mask = holdout_mask(n_samples, self.seed, self.experiences_done)
        if mask.all() or not mask.any():
            raise ValueError(f"ridge='auto' fits on 80% of an experience and validates on the rest, which "
                             f"needs at least 2 samples; this experience has {n_samples}: set strategy.ridge to a number")
        m, k = self.gram.shape[0], self.n_classes
        self._fold = {"mask": mask, "pos": 0, "g": torch.zeros(m, m, dtype=torch.float64, device=self.gram.device),
                      "c": torch.zeros(m, k, dtype=torch.float64, device=self.gram.device), "h": [], "y": []}

    def accumulate(self, z: torch.Tensor, y: torch.Tensor) -> None:
        h = self.hidden(z)
        onehot = F.one_hot(y, self.n_classes).double()
        if self._fold is None:
            self.gram += h.T @ h
            self.targets += h.T @ onehot
            return
        # Fit and held-out parts are kept apart until `finalise` (G = G_fit + H_val^T H_val).
        fold = self._fold
        val = fold["mask"][fold["pos"]:fold["pos"] + len(y)].to(h.device)
        fold["pos"] += len(y)
        hf, yf = h[~val], onehot[~val]
        fold["g"] += hf.T @ hf
        fold["c"] += hf.T @ yf
        fold["h"].append(h[val])
        fold["y"].append(onehot[val])

    def finalise(self) -> None:
        lam = self.ridge
        if self._fold is not None:
            fold, self._fold = self._fold, None
            h_val, y_val = torch.cat(fold["h"]), torch.cat(fold["y"])
            # The paper's selection uses the current experience only, not the accumulated G.
            lam, self.ridge_losses = select_ridge(fold["g"], fold["c"], h_val, y_val)
            self.gram += fold["g"] + h_val.T @ h_val
            self.targets += fold["c"] + h_val.T @ y_val
        eye = torch.eye(self.gram.shape[0], dtype=torch.float64, device=self.gram.device)
        self.weight.copy_(torch.linalg.solve(self.gram + lam * eye, self.targets))
        self.chosen_ridges.append(float(lam))

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        return self.hidden(z) @ self.weight


@dataclass
class RanPACParams:
    projection_dim: int = 2000  # M; the paper uses 10000 (docs/closed_form.md: cost)
    ridge: str | float = "auto"

    def __post_init__(self):
        if self.projection_dim < 1:
            raise ValueError(f"bad projection_dim {self.projection_dim}; accepted: an integer >= 1 (paper: 10000)")
        if isinstance(self.ridge, str):
            if self.ridge != "auto":
                raise ValueError(f"bad ridge {self.ridge!r}; accepted: 'auto' or a number > 0")
        elif not (math.isfinite(self.ridge) and self.ridge > 0):
            raise ValueError(f"bad ridge {self.ridge!r}; accepted: 'auto' or a number > 0")


@register_strategy(
    "ranpac", description="RanPAC: fixed random ReLU projection of the frozen input features + ridge "
    "classifier on the accumulated Gram matrix; no training (phase 1 of the paper not done)",
    supports=("class_il", "domain_il"), params=RanPACParams,
    defaults={"*": {"train.epochs": 1}},  # one statistics pass is the method
)
def build(ctx):
    p = ctx.params
    head = RanPACHead(math.prod(ctx.info.input_shape), ctx.info.n_classes, p.projection_dim, p.ridge, ctx.config.seed)
    return closed_form_template(ctx, head)
