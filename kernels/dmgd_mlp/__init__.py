"""DMGD row-MLP: the memory of Deep Momentum GD on gradient tokens (kernel spec K4).

Rows x [N, d] are gradient tokens; the memory is V = Wa [h, d], U = Wb [d, h] and
P(x) = x + U relu(V x) (no biases; `clbench.nested.optim.dmgd`). Two ops:

- `dmgd_mlp_read(x, v, u)`: P(x) for every row, DMGD's read over all tokens of all
  parameters at every step (the hot part);
- `dmgd_mlp_inner_grad(x, v, u, objective=..., target=...)`: (loss, ∇v, ∇u) of DMGD's
  write objective on a token subsample: "l2_recon" (regression onto `target`) or "precond"
  (token-space orthogonality, two passes over the rows).

Implementations, picked like `dgd_rule`'s (same names, same CLBENCH_KERNELS override):
"naive" (row loop, gradients written out by hand: ground truth), "chunk" (batched matmuls
and autograd: what DMGD always ran, the unfused reference), "triton" (fused kernels with a
deterministic two-pass reduction, CUDA or CPU under TRITON_INTERPRET=1; the read has a
backward that recomputes through "chunk"), "auto": "triton" for CUDA float32 tensors when
triton is installed and the kernels take the shape (d <= 64, h <= 32), else "chunk".
`triton.py` is imported lazily: TRITON_INTERPRET is read when its kernels are decorated.
"""

from __future__ import annotations

import torch

from .. import dgd_rule as _dgd_rule
from ..common import check_same_float_tensors
from .chunk import inner_grad_chunk, read_chunk
from .naive import inner_grad_naive, read_naive

__all__ = [
    "OBJECTIVES",
    "dmgd_mlp_inner_grad",
    "dmgd_mlp_read",
    "inner_grad_chunk",
    "inner_grad_naive",
    "read_chunk",
    "read_naive",
    "resolve_impl",
]

OBJECTIVES = ("precond", "l2_recon")


def dmgd_mlp_read(
    x: torch.Tensor, v: torch.Tensor, u: torch.Tensor, *, impl: str = "auto", check: bool = True
) -> torch.Tensor:
    """P(x) = x + U relu(V x) for rows x [N, d], v [h, d], u [d, h]; returns [N, d].
    check=False skips the shape/dtype checks (~10 µs a call on CPU; DMGD's many small
    per-parameter reads build their inputs themselves)."""
    if check:
        check_inputs(x, v, u)
    impl = resolve_impl(impl, x, v.shape[0])
    if impl == "naive":
        return read_naive(x, v, u)
    if impl == "triton":
        from .triton import ReadTriton, check_supported

        check_supported(x, v)
        return ReadTriton.apply(x, v, u)
    return read_chunk(x, v, u)


def dmgd_mlp_inner_grad(
    x: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    *,
    objective: str,
    target: torch.Tensor | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ∇v, ∇u) of DMGD's write objective on rows x [N >= 1, d]; loss is a 0-dim
    tensor. `target` [N, d]: the regression target of "l2_recon" (None for "precond")."""
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective={objective!r} is not accepted; accepted: {', '.join(OBJECTIVES)}"
        )
    check_inputs(x, v, u, target if objective == "l2_recon" else None)
    if objective == "l2_recon" and target is None:
        raise ValueError("objective='l2_recon' needs a target [N, d]")
    if len(x) == 0:
        raise ValueError("the inner gradient needs at least one row; got x of shape (0, d)")
    impl = resolve_impl(impl, x, v.shape[0])
    if impl == "triton":
        from .triton import check_supported, inner_grad_triton

        check_supported(x, v)
        return inner_grad_triton(objective, x, v, u, target)
    grad_fn = inner_grad_naive if impl == "naive" else inner_grad_chunk
    return grad_fn(objective, x, v, u, target)


def resolve_impl(impl: str, x: torch.Tensor, hidden: int) -> str:
    """The implementation run for `impl` on rows like x and a memory of width `hidden`:
    as `dgd_rule.resolve_impl`, except that "auto" (and CLBENCH_KERNELS) never picks
    "triton" for a case the kernels do not take (then it runs "chunk")."""
    resolved = _dgd_rule.resolve_impl(impl, x)
    if resolved != "triton" or impl != "auto":
        return resolved
    if not _dgd_rule._triton_installed():  # CLBENCH_KERNELS=triton without triton
        return "chunk"
    from .triton import supported_problem

    return "chunk" if supported_problem(x.dtype, x.shape[-1], hidden) else "triton"


def check_inputs(x, v, u, target=None) -> None:
    """ValueError naming the argument if shapes, dtypes or devices do not fit together."""
    named = {"x": x, "v": v, "u": u} | ({} if target is None else {"target": target})
    check_same_float_tensors(named)
    if x.dim() != 2 or v.dim() != 2:
        raise ValueError(
            f"x must be [N, d] and v [h, d]; got {tuple(x.shape)} and {tuple(v.shape)}"
        )
    (h, d), n = v.shape, x.shape[0]
    expected = {"x": (n, d), "u": (d, h), "target": (n, d)}
    for name, t in named.items():
        if name in expected and tuple(t.shape) != expected[name]:
            raise ValueError(
                f"{name} must have shape {expected[name]} (from v [h={h}, d={d}] and x's {n} rows); got {tuple(t.shape)}"
            )
