"""Triton kernel for the CMS accumulate-and-step (kernel K3): one launch per level step.

One program per BLOCK elements of a level's flat fp32 buffers. Every step it loads the
gradient and the accumulator and adds; if the step is due (a runtime scalar, so due and
not-due steps share one compiled kernel) it also loads the parameter and optimizer
buffers, applies the rule to acc * inv_count, stores them and writes acc = 0; otherwise
it stores the accumulator and touches nothing else. Memory traffic per element (fp32):
not due 12 B; due SGD 20 B, SGD+momentum 28 B, Adam/AdamW 36 B. The reference does the
same work in ~2-10 separate passes.

The step count enters as runtime scalars too: its Adam bias corrections are computed on
the host in double (`adam_scalars`), as torch.optim does, and passed in. The rule and
which terms are on (momentum, weight-decay kind) are compile-time constants: a level's
rule does not change from step to step. Division and sqrt are the IEEE-rounded
`div_rn`/`sqrt_rn` (Triton's default fp32 `/` and `sqrt` are approximate on NVIDIA);
the compiler may still fuse a*b+c into an FMA, so results differ from torch.optim's fp32
arithmetic by a few ulps (see the tests for the measured error).

Offsets are int32: a level holds fewer than 2**31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .naive import Rule, adam_scalars

# Compile-time codes; globals read inside a compiled kernel must be tl.constexpr objects.
SGD, ADAM = tl.constexpr(0), tl.constexpr(1)
NO_WD, L2_WD, DECOUPLED_WD = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


# `due` would otherwise be specialised (Triton compiles a separate variant for an int
# argument equal to 1); it is a plain runtime branch here.
@triton.jit(do_not_specialize=["due"])
def _cms_step_kernel(
    grad, acc, param, buf1, buf2,  # flat fp32 [N]; buf1/buf2: momentum or exp_avg/exp_avg_sq
    N, scale, inv_count, due,
    lr, momentum, weight_decay, decay,  # decay = 1 - lr * weight_decay (AdamW)
    lerp_w, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size,
    RULE: tl.constexpr, MOMENTUM: tl.constexpr, WD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    a = tl.load(acc + offs, mask=mask) + scale * tl.load(grad + offs, mask=mask)
    if due:
        g = a * inv_count
        p = tl.load(param + offs, mask=mask)
        if RULE == SGD:
            if WD == L2_WD:
                g = g + weight_decay * p
            if MOMENTUM:
                g = tl.load(buf1 + offs, mask=mask) * momentum + g
                tl.store(buf1 + offs, g, mask=mask)
            p = p - lr * g
        else:
            if WD == DECOUPLED_WD:
                p = p * decay
            if WD == L2_WD:
                g = g + weight_decay * p
            m = tl.load(buf1 + offs, mask=mask)
            # torch's lerp: start + w (end - start) for w < 0.5, else end - (1 - w)(end - start)
            diff = g - m
            if lerp_w < 0.5:
                m = m + lerp_w * diff
            else:
                m = g - (1.0 - lerp_w) * diff
            v = tl.load(buf2 + offs, mask=mask) * beta2 + one_minus_beta2 * g * g
            denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
            p = p + neg_step_size * tl.div_rn(m, denom)
            tl.store(buf1 + offs, m, mask=mask)
            tl.store(buf2 + offs, v, mask=mask)
        tl.store(param + offs, p, mask=mask)
        tl.store(acc + offs, tl.zeros_like(a), mask=mask)
    else:
        tl.store(acc + offs, a, mask=mask)


# Decided when the kernel above was decorated: TRITON_INTERPRET must be set before this
# module is imported, and only then can the kernel run on CPU tensors.
INTERPRETED = not isinstance(_cms_step_kernel, triton.JITFunction)
BLOCK = 1024  # elements per program (4 KiB per buffer): plenty for a memory-bound loop; not tuned


def cms_step_triton_flat(
    param: torch.Tensor,
    grad: torch.Tensor,
    acc: torch.Tensor,
    state: dict[str, torch.Tensor],
    rule: Rule,
    *,
    due: bool,
    step: int,
    scale: float = 1.0,
    inv_count: float = 1.0,
    block: int = BLOCK,
) -> None:
    """One accumulate (and, if due, update) over flat contiguous fp32 buffers, in place.

    param, grad, acc and every state buffer (the rule's `state_names`) are 1-D fp32
    tensors of the same length on one device; `step` is the update number (1-based)
    that a due step applies, used for Adam's bias correction.
    """
    if not param.is_cuda and not INTERPRETED:
        raise RuntimeError(
            "the Triton cms_step kernel needs CUDA tensors, or TRITON_INTERPRET=1 set before "
            "clbench.kernels.cms_step.triton is first imported (CPU interpreter); "
            "use impl='chunk' on CPU"
        )
    bufs = [state[name] for name in rule.state_names]
    tensors = [param, grad, acc, *bufs]
    bad = [t for t in tensors if t.dtype != torch.float32 or t.dim() != 1 or not t.is_contiguous()]
    if bad or any(t.numel() != param.numel() for t in tensors):
        raise ValueError(
            "cms_step_triton_flat needs 1-D contiguous float32 buffers of one length "
            f"(got dtypes {[str(t.dtype) for t in tensors]}, shapes "
            f"{[tuple(t.shape) for t in tensors]}); use impl='chunk' for other dtypes"
        )
    bufs += [param] * (2 - len(bufs))  # unused pointer slots: never read for this rule
    beta1, beta2 = rule.betas
    neg_step_size, bc2_sqrt = adam_scalars(rule, step) if rule.name != "sgd" else (0.0, 1.0)
    wd = rule.weight_decay
    wd_kind = NO_WD if not wd else DECOUPLED_WD if rule.name == "adamw" else L2_WD
    rule_code = SGD if rule.name == "sgd" else ADAM
    n = param.numel()
    _cms_step_kernel[(triton.cdiv(n, block),)](
        grad.detach(), acc, param.detach(), bufs[0], bufs[1],
        n, float(scale), float(inv_count), int(due),
        rule.lr, rule.momentum, wd, 1 - rule.lr * wd,
        1 - beta1, beta2, 1 - beta2, bc2_sqrt, rule.eps, neg_step_size,
        RULE=rule_code.value, MOMENTUM=bool(rule.momentum), WD=wd_kind.value,
        BLOCK=block,
    )  # fmt: skip
