"""CMS multi-rate accumulate-and-step as one multi-tensor op (kernel spec K3).

Per level and per training iteration: acc += scale * grad; on a due step the level's
update rule (SGD or Adam/AdamW with torch.optim's semantics) runs on acc * inv_count and
acc is zeroed. `FlatLevel` owns a level's buffers; `cms_step(level, grads, due=...)` runs
one iteration on the implementation picked like `dgd_rule`'s:

- "naive": `naive.py`, a per-tensor loop (ground truth, any dtype/device);
- "chunk": `chunk.py`, one `torch._foreach_*` call per stage (the PyTorch reference);
- "triton": `triton.py`, one kernel launch per call over flat fp32 buffers (CUDA, or
  CPU under TRITON_INTERPRET=1);
- "auto": "triton" for CUDA params when triton is installed, else "chunk";
  CLBENCH_KERNELS=reference|triton overrides "auto" (see `dgd_rule.resolve_impl`).

Costs of the flat layout on the Triton path: the gradients arrive as separate tensors,
so each call first gathers them into a flat buffer (one extra read + write of the level,
8 B/element; pass an already flat gradient to skip it). Parameters are read in place
when they are bound (`FlatLevel(..., bind=True)` makes each `p.data` a view of one flat
buffer); an unbound parameter is copied in before and out after a due step (16 B/element,
due steps only). Zero extra cost for the reference paths, which work on the tensor lists.

A step where some gradients are None or where tensors have different step counts (a
task-IL head without gradient in a chunk) runs on "chunk" even when "triton" is asked
for: only the reference paths skip individual tensors, as torch.optim does.
`cms_step` returns the implementation that ran.

`flat_level_from_optimizer` builds a level doing what a torch.optim optimizer does;
`export_optimizer_state` / `import_optimizer_state` map its state to and from torch.optim's
layout, so a checkpoint (`MultiRateOptimizer.state_dict`) loads with or without the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..dgd_rule import resolve_impl as _resolve_dgd_impl
from .chunk import apply_rule, cms_step_chunk
from .naive import RULES, Rule, adam_scalars, cms_step_naive

__all__ = [
    "RULES",
    "FlatLevel",
    "Rule",
    "adam_scalars",
    "apply_rule",
    "cms_step",
    "cms_step_chunk",
    "cms_step_naive",
    "export_optimizer_state",
    "flat_level_from_optimizer",
    "import_optimizer_state",
    "resolve_impl",
    "rule_from_optimizer",
]


class FlatLevel:
    """One CMS level: its parameters and flat, contiguous buffers for the accumulator and
    the rule's optimizer state (views per parameter in `acc_views` / `state_views()`).

    steps[i]: updates applied to parameter i (torch.optim's per-parameter `step`);
    seen[i]: parameter i got a gradient since the last due step. `rule` may be replaced
    between steps (e.g. a new lr); buffers of a newly needed state start at zero.
    """

    def __init__(self, params: Sequence[torch.Tensor], rule: Rule, *, bind: bool = False):
        self.params = list(params)
        if not self.params:
            raise ValueError("a level needs at least one parameter")
        first = self.params[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in self.params):
            raise ValueError("a level's parameters must share one device and dtype")
        self.rule = rule
        self.numels = [p.numel() for p in self.params]
        self.numel = sum(self.numels)
        self.acc = torch.zeros(self.numel, dtype=first.dtype, device=first.device)
        self.acc_views = self.views(self.acc)
        self.state: dict[str, torch.Tensor] = {}  # flat buffers, created on first use
        self._state_views: dict[str, list[torch.Tensor]] = {}
        self.steps = [0] * len(self.params)
        self.seen = [False] * len(self.params)
        self.flat_param = torch.empty_like(self.acc)  # the kernel's parameter buffer
        self.param_views = self.views(self.flat_param)
        self.flat_grad: torch.Tensor | None = None  # gather buffer, Triton path only
        if bind:
            self.bind_params()

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views (parameter shapes) of a flat [numel] tensor."""
        parts = torch.split(flat, self.numels)
        return [t.view_as(p) for t, p in zip(parts, self.params, strict=True)]

    def state_views(self) -> dict[str, list[torch.Tensor]]:
        for name in self.rule.state_names:
            if name not in self.state:
                self.state[name] = torch.zeros_like(self.acc)
                self._state_views[name] = self.views(self.state[name])
        return {name: self._state_views[name] for name in self.rule.state_names}

    @torch.no_grad()
    def bind_params(self) -> None:
        """Make each parameter's storage a view of `flat_param` (zero-copy Triton steps).
        Replacing a parameter's `.data` later unbinds it; it is then copied per due step."""
        torch._foreach_copy_(self.param_views, [p.detach() for p in self.params])
        for p, view in zip(self.params, self.param_views, strict=True):
            p.data = view

    def unbound(self) -> list[int]:
        """Indices of parameters whose storage is not their slice of `flat_param`."""
        return [
            i
            for i, (p, view) in enumerate(zip(self.params, self.param_views, strict=True))
            if p.data_ptr() != view.data_ptr()
        ]


@torch.no_grad()
def cms_step(
    level: FlatLevel,
    grads: Sequence[torch.Tensor | None] | torch.Tensor,
    *,
    due: bool,
    scale: float = 1.0,
    inv_count: float = 1.0,
    impl: str = "auto",
) -> str:
    """Accumulate `scale * grads` into the level; if `due`, step on acc * inv_count and
    zero acc. grads: one tensor (or None) per parameter, or one flat [numel] tensor.
    For a chunk of n gradients: mean = (scale 1, inv_count 1/n), sum = (1, 1).
    Returns the implementation that ran: "naive", "chunk" or "triton".
    """
    impl = resolve_impl(impl, level.acc)
    flat_grad = grads if isinstance(grads, torch.Tensor) else None
    if flat_grad is not None:
        if flat_grad.shape != (level.numel,):
            raise ValueError(
                f"a flat gradient must have shape ({level.numel},); got {tuple(flat_grad.shape)}"
            )
        grads = level.views(flat_grad)
    grads = list(grads)
    if len(grads) != len(level.params):
        raise ValueError(
            f"expected {len(level.params)} gradients, one per parameter; got {len(grads)}"
        )
    seen = [s or g is not None for s, g in zip(level.seen, grads, strict=True)]
    ragged = any(g is None for g in grads) or (due and len(set(level.steps)) > 1)
    if impl == "triton" and ragged:
        impl = "chunk"
    if impl == "triton":
        _triton_step(level, grads, flat_grad, due, scale, inv_count)
    else:
        step_fn = cms_step_naive if impl == "naive" else cms_step_chunk
        step_fn(
            level.params, grads, level.acc_views, level.state_views(), level.rule,
            due=due, steps=[s + 1 for s in level.steps], scale=scale, inv_count=inv_count,
            seen=seen,
        )  # fmt: skip
    if due:
        level.steps = [
            s + 1 if updated else s for s, updated in zip(level.steps, seen, strict=True)
        ]
        seen = [False] * len(seen)
    level.seen = seen
    return impl


def _triton_step(level, grads, flat_grad, due, scale, inv_count) -> None:
    from .triton import cms_step_triton_flat  # lazy: TRITON_INTERPRET is read at import

    if flat_grad is None:
        if level.flat_grad is None:
            level.flat_grad = torch.empty_like(level.acc)
        flat_grad = torch.cat([g.reshape(-1) for g in grads], out=level.flat_grad)
    copied = level.unbound() if due else []
    params = [level.params[i] for i in copied]
    views = [level.param_views[i] for i in copied]
    if copied:
        torch._foreach_copy_(views, params)
    level.state_views()  # allocate the rule's state buffers
    cms_step_triton_flat(
        level.flat_param, flat_grad.contiguous(), level.acc, level.state, level.rule,
        due=due, step=level.steps[0] + 1, scale=scale, inv_count=inv_count,
    )  # fmt: skip
    if copied:
        torch._foreach_copy_(params, views)


def resolve_impl(impl: str, like: torch.Tensor) -> str:
    """The implementation `cms_step` runs for `impl` on a level with buffers like `like`.
    Same names, environment override and error messages as `dgd_rule.resolve_impl`."""
    return _resolve_dgd_impl(impl, like)


_OPTIMIZER_RULES = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
_UNSUPPORTED = ("nesterov", "dampening", "amsgrad", "maximize", "differentiable")


def rule_from_optimizer(optimizer: torch.optim.Optimizer) -> Rule:
    """The `Rule` doing what `optimizer` (torch.optim SGD, Adam or AdamW with one param
    group) does; ValueError naming the type or option `cms_step` does not support."""
    name = _OPTIMIZER_RULES.get(type(optimizer))
    if name is None:
        accepted = ", ".join(f"torch.optim.{cls.__name__}" for cls in _OPTIMIZER_RULES)
        raise ValueError(f"no cms_step rule for {type(optimizer).__name__}; accepted: {accepted}")
    if len(optimizer.param_groups) != 1:
        raise ValueError("cms_step takes one param group per level")
    group = optimizer.param_groups[0]
    unsupported = [k for k in _UNSUPPORTED if group.get(k)]
    if unsupported:
        raise ValueError(
            f"cms_step does not support {type(optimizer).__name__}({unsupported[0]}=...)"
        )
    if name == "adam" and group.get("decoupled_weight_decay"):
        name = "adamw"
    kwargs = {"lr": float(group["lr"]), "weight_decay": float(group["weight_decay"])}
    if name == "sgd":
        kwargs["momentum"] = float(group["momentum"])
    else:
        kwargs.update(betas=tuple(float(b) for b in group["betas"]), eps=float(group["eps"]))
    return Rule(name, **kwargs)


def export_optimizer_state(level: FlatLevel, optimizer: torch.optim.Optimizer) -> None:
    """Write the level's optimizer state into `optimizer.state` as torch.optim keeps it, so
    `optimizer.state_dict()` saves the level and any optimizer of that type can load it.

    `optimizer` is the one `level.rule` came from (`rule_from_optimizer`), over the level's
    parameters. A parameter never updated has no entry (as in torch.optim); an updated one
    gets its buffers as views of the flat ones (no copy) and, for Adam/AdamW, its `step`.
    """
    buffers = level.state_views()
    scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    optimizer.state.clear()
    for j, (p, steps) in enumerate(zip(level.params, level.steps, strict=True)):
        entry = {name: views[j] for name, views in buffers.items()}
        if level.rule.name != "sgd" and steps:
            entry["step"] = torch.tensor(float(steps), dtype=scalar_dtype)
        if steps and entry:  # plain SGD keeps no state at all
            optimizer.state[p] = entry


@torch.no_grad()
def import_optimizer_state(level: FlatLevel, optimizer: torch.optim.Optimizer) -> None:
    """Copy `optimizer.state` in torch.optim's layout (e.g. just loaded by its
    `load_state_dict`) into the level's flat buffers and step counts: the inverse of
    `export_optimizer_state`. SGD keeps no step count: a parameter with a momentum buffer
    counts as updated once (SGD's arithmetic does not use the count)."""
    buffers = level.state_views()
    for j, p in enumerate(level.params):
        entry = optimizer.state.get(p, {})
        for name, views in buffers.items():
            saved = entry.get(name)
            if saved is None:  # never updated: torch.optim has no buffer yet
                views[j].zero_()
            else:
                views[j].copy_(saved)
        if "step" in entry:
            level.steps[j] = int(entry["step"])
        else:
            level.steps[j] = int(any(entry.get(name) is not None for name in buffers))


def flat_level_from_optimizer(optimizer: torch.optim.Optimizer) -> FlatLevel:
    """A level over `optimizer`'s parameters that does its arithmetic (its rule and state).

    ValueError naming the reason when `cms_step` cannot reproduce it: no rule (see
    `rule_from_optimizer`), a fused or capturable torch.optim (other rounding), sparse or
    integer parameters, or parameters on several devices or of several dtypes.
    """
    rule = rule_from_optimizer(optimizer)
    group = optimizer.param_groups[0]
    special = [k for k in ("fused", "capturable") if group.get(k)]
    if special:
        raise ValueError(
            f"cms_step does not reproduce {type(optimizer).__name__}({special[0]}=True)"
        )
    if any(p.is_sparse or not p.is_floating_point() for p in group["params"]):
        raise ValueError("cms_step needs dense floating-point parameters")
    level = FlatLevel(group["params"], rule)
    import_optimizer_state(level, optimizer)
    return level
