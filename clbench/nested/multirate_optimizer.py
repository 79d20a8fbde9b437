"""The multi-rate optimizer wrapper behind CMS (Eq. 71): one level per parameter group, each
stepped by its own inner optimizer every `period` iterations; see `clbench.nested.multirate`
for the schedule's decisions (D1, D6, D7, D12) and how it survives Avalanche's optimizer
handling. Levels with a torch.optim SGD/Adam/AdamW inner optimizer run on kernel K3
(`clbench.kernels.cms_step`).
"""

from __future__ import annotations

import operator as op
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clbench.kernels.cms_step import (
    FlatLevel,
    apply_rule,
    cms_step,
    export_optimizer_state,
    flat_level_from_optimizer,
    import_optimizer_state,
    resolve_impl,
    rule_from_optimizer,
)


@dataclass
class Level:
    name: str
    params: list[nn.Parameter]
    period: int
    lr_mult: float = 1.0


KERNEL_IMPLS = ("auto", "naive", "chunk", "triton")


class MultiRateOptimizer(torch.optim.Optimizer):
    """Steps each level's inner optimizer every `period` calls to `step()`.

    `make_inner(index, params, lr_mult)` builds a level's optimizer (at construction and at
    `reset_state`). A level with lr multiplier 0 is frozen: never accumulated, never stepped
    (a zero lr would still let weight decay or lr-free rules move it).

    kernel=True (default): a level whose inner optimizer is torch.optim SGD, Adam or AdamW
    (what `rule_from_optimizer` reads) runs its accumulate-and-step through kernel K3
    (`clbench.kernels.cms_step`, `kernel_impl` as its `impl`: "auto" = Triton on CUDA, the
    foreach reference on CPU); the inner optimizer then only holds the hyperparameters and,
    on request (`inner(i)`, `state_dict()`), a torch.optim-layout view of the state. Other
    inner optimizers (DMGD, M3, ...) and kernel=False take the per-level path: accumulators
    swapped in as `.grad`, then `inner.step()`. On CPU both paths give bit-identical results.
    """

    def __init__(
        self,
        levels: Sequence[Level],
        make_inner: Callable,
        reduction: str = "mean",
        *,
        kernel: bool = True,
        kernel_impl: str = "auto",
    ):
        empty = [lvl.name for lvl in levels if not lvl.params]
        if empty:
            raise ValueError(f"level {empty[0]!r} has no parameters")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if kernel_impl not in KERNEL_IMPLS:
            raise ValueError(
                f"kernel_impl must be one of {', '.join(map(repr, KERNEL_IMPLS))}; "
                f"got {kernel_impl!r}"
            )
        groups = [
            {"params": lvl.params, "name": lvl.name, "period": lvl.period, "lr_mult": lvl.lr_mult}
            for lvl in levels
        ]
        super().__init__(groups, defaults={})
        self.levels, self.make_inner, self.reduction = list(levels), make_inner, reduction
        self.kernel, self.kernel_impl = kernel, kernel_impl
        self.iteration = 0
        self.updates = [0] * len(levels)  # how many times each level has stepped
        self.last_fired: list[int] = []
        # per level: inner, flat (K3 level or None), impl, acc, seen, pending, ran
        self._state: list[dict] = [{} for _ in self.levels]
        self._build()

    def _build(self, only: int | None = None) -> None:
        for i, lvl in enumerate(self.levels):
            if only is not None and i != only:
                continue
            frozen = lvl.lr_mult == 0
            inner = None if frozen else self.make_inner(i, lvl.params, lvl.lr_mult)
            flat = self._kernel_level(inner, lvl.params)
            impl = self._resolve(flat) if flat is not None else None
            if flat is not None:
                acc = flat.acc_views if lvl.period > 1 else []
            else:
                acc = [torch.zeros_like(p) for p in lvl.params] if lvl.period > 1 else []
            self._state[i] = {
                "inner": inner,
                "flat": flat,
                "impl": impl,
                "acc": [] if frozen else acc,
                "seen": [False] * len(lvl.params),  # which params got a gradient in this chunk
                "pending": 0,  # gradients accumulated in this chunk
                "ran": set(),  # implementations cms_step ran for this level
                "where": (lvl.params[0].device, lvl.params[0].dtype),  # of the buffers
            }

    def _kernel_level(self, inner, params) -> FlatLevel | None:
        """A K3 level doing `inner`'s arithmetic, or None for the per-level path: kernel off,
        a frozen level, or an optimizer `flat_level_from_optimizer` refuses (DMGD, M3, ...)."""
        if not self.kernel or inner is None:
            return None
        try:
            flat = flat_level_from_optimizer(inner)
        except ValueError:
            return None
        same = len(flat.params) == len(params) and all(map(op.is_, flat.params, params))
        return flat if same else None  # the per-parameter lists must line up

    def _resolve(self, flat: FlatLevel) -> str:
        impl = resolve_impl(self.kernel_impl, flat.acc)
        if impl == "triton" and flat.acc.dtype != torch.float32:
            return "chunk"  # the Triton kernel takes fp32 buffers only
        if impl == "triton":
            flat.bind_params()  # parameters become views of the kernel's flat buffer
        return impl

    def inner(self, i: int) -> torch.optim.Optimizer | None:
        st = self._state[i]
        if st["flat"] is not None:  # its torch.optim-layout state, as views of the flat buffers
            export_optimizer_state(st["flat"], st["inner"])
        return st["inner"]

    def level_lrs(self) -> dict[str, float]:
        """Each level's learning rate by level name: its inner optimizer's (the run's lr times the
        level's multiplier, as schedulers leave it), 0 for a frozen level. Read by --log."""
        return {
            lvl.name: float(st["inner"].param_groups[0].get("lr", float("nan"))) if st["inner"] is not None else 0.0
            for lvl, st in zip(self.levels, self._state, strict=True)
        }

    def kernel_level(self, i: int) -> FlatLevel | None:
        """Level i's K3 buffers, or None when it takes the per-level path."""
        return self._state[i]["flat"]

    def kernel_ran(self, i: int) -> set[str]:
        """The `cms_step` implementations that ran for level i since it was (re)built."""
        return set(self._state[i]["ran"])

    def pending(self, i: int) -> int:
        return self._state[i]["pending"]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MultiRateOptimizer does not support closures")
        self.iteration += 1
        fired = []
        for i, lvl in enumerate(self.levels):
            if self._moved(i):
                self._relocate(i)
            st = self._state[i]
            if st["inner"] is None:
                continue
            if lvl.period == 1:
                if st["flat"] is not None and st["impl"] != "triton":
                    self._reference_step(i, [p.grad for p in lvl.params])
                elif st["flat"] is not None:
                    self._kernel_step(i, [p.grad for p in lvl.params], due=True)
                else:
                    st["inner"].step()
                self.updates[i] += 1
                fired.append(i)
                continue
            grads = [p.grad for p in lvl.params]
            st["pending"] += 1
            due = st["pending"] == lvl.period
            if st["flat"] is not None:
                self.updates[i] += self._kernel_step(i, grads, due)
            else:
                self._accumulate(st, grads)
                if due:
                    self._fire(i)
            if due:
                fired.append(i)
        self.last_fired = fired

    def _accumulate(self, st: dict, grads: list) -> None:
        if all(g is not None for g in grads):
            torch._foreach_add_(st["acc"], grads)
            st["seen"] = [True] * len(grads)
            return
        # e.g. the heads of other tasks in task-IL: no gradient, not accumulated
        idx = [j for j, g in enumerate(grads) if g is not None]
        if idx:
            torch._foreach_add_([st["acc"][j] for j in idx], [grads[j] for j in idx])
        for j in idx:
            st["seen"][j] = True

    def _kernel_step(self, i: int, grads, due: bool) -> bool:
        """One K3 call: accumulate `grads` (one per parameter, None = no gradient); if due,
        step on the chunk's mean or sum. True when a due step updated a parameter (`_fire`
        counts an update only then)."""
        st = self._state[i]
        flat = st["flat"]
        has_grad = isinstance(grads, torch.Tensor) or any(g is not None for g in grads)
        live = due and (has_grad or any(flat.seen))
        inv_count = 1.0
        if due:
            # hyperparameters set on inner(i) take effect, as on the per-level path
            flat.rule = rule_from_optimizer(st["inner"])
            if self.reduction == "mean" and st["pending"] > 1:
                inv_count = 1.0 / st["pending"]
        st["ran"].add(cms_step(flat, grads, due=due, inv_count=inv_count, impl=st["impl"]))
        if due:
            st["pending"] = 0
        return live

    def _reference_step(self, i: int, grads: list) -> None:
        """A period-1 level on the reference path: K3's rule straight on the gradients.
        Adding them to a zero accumulator and zeroing it again, as `cms_step` would, gives
        the same numbers for two extra passes over the level."""
        st = self._state[i]
        flat, live = st["flat"], [j for j, g in enumerate(grads) if g is not None]
        if not live:
            return
        flat.rule = rule_from_optimizer(st["inner"])
        state = {name: [v[j] for j in live] for name, v in flat.state_views().items()}
        steps = [flat.steps[j] + 1 for j in live]
        apply_rule(
            [flat.params[j] for j in live], [grads[j] for j in live], state, flat.rule, steps
        )
        for j in live:
            flat.steps[j] += 1
        st["ran"].add("chunk")

    @torch.no_grad()
    def flush(self) -> list[int]:
        """Apply every partial chunk now (experience end, D8); returns the levels updated."""
        fired = [
            i for i, st in enumerate(self._state) if st["inner"] is not None and st["pending"] > 0
        ]
        for i in fired:
            flat = self._state[i]["flat"]
            if flat is None:
                self._fire(i)
                continue
            # nothing to add; a zero flat gradient keeps a full level on the Triton kernel
            full = self._state[i]["impl"] == "triton" and all(flat.seen)
            grads = torch.zeros_like(flat.acc) if full else [None] * len(flat.params)
            self.updates[i] += self._kernel_step(i, grads, due=True)
        return fired

    def _fire(self, i: int) -> None:
        """One inner step on the chunk's sum or mean, then clear the accumulator."""
        lvl, st = self.levels[i], self._state[i]
        live = [a for a, s in zip(st["acc"], st["seen"], strict=True) if s]
        if not live:  # no parameter of this level got a gradient during the chunk
            st["pending"] = 0
            return
        if self.reduction == "mean" and st["pending"] > 1:
            torch._foreach_mul_(live, 1.0 / st["pending"])
        saved = [p.grad for p in lvl.params]
        for p, a, s in zip(lvl.params, st["acc"], st["seen"], strict=True):
            p.grad = a if s else None  # None, not zero: a zero grad still moves momentum/decay
        st["inner"].step()
        for p, g in zip(lvl.params, saved, strict=True):
            p.grad = g  # other plugins may still read this iteration's gradient
        torch._foreach_zero_(live)
        st["seen"], st["pending"] = [False] * len(lvl.params), 0
        self.updates[i] += 1

    def reset_state(self) -> None:
        """Fresh inner optimizers and empty accumulators (D12 'reset')."""
        self._build()

    def sync(self) -> None:
        """Rebuild any level whose group Avalanche's update_optimizer changed."""
        for i, (lvl, group) in enumerate(zip(self.levels, self.param_groups, strict=True)):
            if len(group["params"]) != len(lvl.params) or any(
                a is not b for a, b in zip(group["params"], lvl.params, strict=True)
            ):
                lvl.params = list(group["params"])
                self._build(only=i)

    def _moved(self, i: int) -> bool:
        """Level i's parameters are no longer on the device or dtype of its buffers (the
        `cms` strategy builds the wrapper before Avalanche moves the model to the device)."""
        p = self.levels[i].params[0]
        return self._state[i]["where"] != (p.device, p.dtype)

    def _relocate(self, i: int) -> None:
        """Rebuild level i where its parameters now are, keeping its state."""
        saved = self._level_state(i)
        self._build(only=i)
        self._load_level(i, saved)

    def state_dict(self) -> dict:
        """One layout for both paths: a level's `inner` is a torch.optim state dict (the K3
        buffers exported to it), so a state saved on one path loads on the other."""
        return {
            "iteration": self.iteration,
            "updates": list(self.updates),
            "levels": [self._level_state(i) for i in range(len(self.levels))],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict["levels"]) != len(self.levels):
            raise ValueError(
                f"state_dict has {len(state_dict['levels'])} levels; this optimizer has "
                f"{len(self.levels)}"
            )
        self.iteration, self.updates = state_dict["iteration"], list(state_dict["updates"])
        for i, saved in enumerate(state_dict["levels"]):
            self._load_level(i, saved)

    def _level_state(self, i: int) -> dict:
        st = self._state[i]
        return {
            "inner": self.inner(i).state_dict() if st["inner"] is not None else None,
            "acc": [a.clone() for a in st["acc"]],
            "seen": list(st["flat"].seen if st["flat"] is not None else st["seen"]),
            "pending": st["pending"],
        }

    @torch.no_grad()
    def _load_level(self, i: int, saved: dict) -> None:
        st = self._state[i]
        if st["inner"] is not None and saved["inner"] is not None:
            st["inner"].load_state_dict(saved["inner"])
            if st["flat"] is not None:  # copy in, then point the inner state at our buffers
                import_optimizer_state(st["flat"], st["inner"])
                export_optimizer_state(st["flat"], st["inner"])
        for a, b in zip(st["acc"], saved["acc"], strict=True):
            a.copy_(b)
        if st["flat"] is not None:
            st["flat"].seen = list(saved["seen"])
        else:
            st["seen"] = list(saved["seen"])
        st["pending"] = saved["pending"]
