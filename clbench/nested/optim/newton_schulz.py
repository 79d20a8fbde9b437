"""Newton–Schulz orthogonalization: the output nonlinearity of Muon and M3 (spec §4.3, §4.7).

`newton_schulz(G)` approximates the polar factor U Vᵀ of G = U S Vᵀ without an SVD. Two
polynomials are offered (M3 option `ns_poly`):

- "quintic" (default): Muon's iteration X ← a X + (b A + c A²) X with A = X Xᵀ and
  (a, b, c) = (3.4445, −4.7750, 2.0315) (Jordan et al. 2024). It is tuned to push small singular
  values up fast; after 5 steps the singular values lie roughly in [0.7, 1.2], not at 1.
- "cubic": X ← 1.5 X − 0.5 X Xᵀ X, the classic Newton–Schulz iteration, which converges to U Vᵀ.
  It is the paper's Eq. 44 (one gradient step on the orthogonality objective ‖OᵀO − I‖²) with
  ζ = 1/4. Eq. 44 also carries an anchor term ζ(O − g); it is zero at the first step (O₀ = g)
  and we drop it afterwards, otherwise the fixed point is a compromise between g and an
  orthogonal matrix instead of the polar factor.

The input is scaled by its Frobenius norm (so every singular value is ≤ 1, where both
iterations converge) and a tall matrix is transposed so that the Gram matrix X Xᵀ is the small
one. The arithmetic runs in float32 (Muon's bf16 trick is a GPU speed-up that would break the
exactness tests on CPU).
"""

from __future__ import annotations

import torch

QUINTIC = (3.4445, -4.7750, 2.0315)
POLYNOMIALS = ("quintic", "cubic")


def newton_schulz(g: torch.Tensor, steps: int = 5, poly: str = "quintic", eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalization of a 2-D tensor; returns a tensor of g's shape and dtype."""
    if g.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(g.shape)}")
    if poly not in POLYNOMIALS:
        raise ValueError(f"unknown Newton–Schulz polynomial {poly!r}; accepted: {', '.join(POLYNOMIALS)}")
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp_min(eps)
    a, b, c = QUINTIC
    for _ in range(steps):
        gram = x @ x.T
        if poly == "quintic":
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        else:
            x = torch.addmm(x, gram, x, beta=1.5, alpha=-0.5)
    if tall:
        x = x.T
    return x.to(g.dtype)


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a ≥2-D parameter as (out, everything else): conv kernels become (out, in·kh·kw)."""
    return t.reshape(t.shape[0], -1)
