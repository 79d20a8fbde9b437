"""Speed of the Triton kernels against their PyTorch references (K1 dgd_rule, K3 cms_step, K4 dmgd_mlp).

K1, gated DGD rule (`clbench.kernels.dgd_rule`), fp32, chunk size 16, DGD term on, read
before write: the chunked reference, `torch.compile` of it, and the Triton forward, forward
only and forward + backward, the latter with the Triton backward kernel and with the backward
recomputed through the reference (the forward row is the same kernel for both).
K2, MLP memory with the DGD rule (`clbench.kernels.mlp_memory`), fp32, self-modifying
targets, DGD on, chunk 16 (semantic), B=8, G=8, T=2048, d=64, h=128 (CPU: T=256): the
chunked reference, torch.compile of it, the fused Triton forward (backward recomputed
through the reference). FLOPs per (b, g, token): 2 (10dh + 3Cd + 3Ch), fwd+bwd as 3x.
K3, CMS accumulate-and-step (`clbench.kernels.cms_step`), fp32: 4 equal levels, each one
MLP block (fc1, fc2 with biases), stepped with SGD+momentum and with AdamW; "accumulate" is
a not-due step of all levels, "due" a step where all levels update, and "per iter" the
mean cost of one iteration when the levels have periods 1, 4, 16 and 64.
K4, DMGD row-MLP (`clbench.kernels.dmgd_mlp`), fp32, d=64, h=16: the read P(x) over all
N = 10M/d (CPU 1M/d) gradient tokens, and the inner gradient of each write objective on
one write's 1024 tokens and on all N; chunk (the reference), torch.compile of it, triton.
Its throughput: 8 B per element moved by the fused kernels, and the matmul FLOPs per row
(read 4dh; l2_recon 10dh; precond 14dh + 4d²).

Sizes: CUDA B=8, T=2048, H=8, K=V=64 and 10M CMS parameters; CPU (`--cpu-small`, the
default without CUDA) T=256 and 1M parameters. Timing: `triton.testing.do_bench` (median)
on CUDA, the median of perf_counter runs on CPU. Throughput uses fixed counts for every
implementation: K1 forward FLOPs of the chunk algorithm per (b, h, token),
4CK + 3CV + 6KV (QKᵀ and KKᵀ in the chunk, the triangular solve, the three state matmuls),
fwd+bwd counted as 3x forward; K3 bytes that the fused kernel must move per element
(accumulate 12 B; due SGD+momentum 28 B, Adam 36 B).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/kernels.py   # writes benchmarks/kernels.md
    python benchmarks/kernels.py --compile on                     # also torch.compile on CPU (slow)
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# No sys.path insert of the repo root: it would let `kernels` shadow Hugging Face's (clbench/sys_path_guard.py).
# Run with the installed clbench: `.venv/bin/python benchmarks/<this file>` after `make install`.

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clbench.kernels.cms_step import FlatLevel, Rule, cms_step  # noqa: E402
from clbench.kernels.dgd_rule import dgd_rule_chunk  # noqa: E402
from clbench.kernels.dmgd_mlp import OBJECTIVES as DMGD_OBJECTIVES  # noqa: E402
from clbench.kernels.dmgd_mlp import dmgd_mlp_inner_grad, dmgd_mlp_read  # noqa: E402
from clbench.kernels.mlp_memory import mlp_memory  # noqa: E402
from clbench.kernels.mlp_memory.testing import random_inputs as k2_inputs  # noqa: E402

CHUNK = 16
K3_RULES = {
    "sgd+momentum": (Rule("sgd", lr=0.01, momentum=0.9, weight_decay=1e-4), 28),
    "adamw": (Rule("adamw", lr=1e-3, weight_decay=1e-2), 36),
}
PERIODS = (1, 4, 16, 64)


def timer(device: str, runs: int) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of fn()."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, return_mode="median")

    def cpu_ms(fn):
        fn()  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    return cpu_ms


# ---- K1 ------------------------------------------------------------------------------


def k1_rows(device: str, shape: tuple[int, ...], compile_: bool, ms) -> list[tuple]:
    B, T, H, K, V = shape
    g = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(B, T, H, K, generator=g),
        F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
        torch.randn(B, T, H, V, generator=g),
        0.5 * torch.rand(B, T, H, generator=g),
        1 - 0.5 * torch.rand(B, T, H, generator=g),
        torch.randn(B, H, K, V, generator=g),
    ]
    inputs = [x.to(device) for x in inputs]
    impls: dict[str, Callable] = {
        "chunk": lambda *x: dgd_rule_chunk(*x, chunk_size=CHUNK, check_values=False)
    }
    if compile_:
        impls["chunk + torch.compile"] = torch.compile(impls["chunk"])
    if device == "cuda":
        from clbench.kernels.dgd_rule.triton import dgd_rule_triton

        for backward in ("recompute", "triton"):
            impls[f"triton ({backward} backward)"] = functools.partial(
                dgd_rule_triton, chunk_size=CHUNK, check_values=False, backward=backward
            )
    flops = B * H * T * (4 * CHUNK * K + 3 * CHUNK * V + 6 * K * V)
    # no fwd row for the Triton backward: its forward is the same kernel as the recompute row's
    return fwd_bwd_rows("K1", impls, inputs, flops, ms, no_fwd_row=("triton (triton backward)",))


# ---- K2 ------------------------------------------------------------------------------


def k2_rows(device: str, shape: tuple[int, ...], compile_: bool, ms) -> list[tuple]:
    """HOPE's MLP memory over a whole sequence: forward, and forward + backward."""
    B, G, T, d, h = shape
    inputs = k2_inputs(B, G, T, d, h, dtype=torch.float32, device=device)
    flags = {"chunk_size": CHUNK, "self_modifying": True, "check_values": False}
    impls: dict[str, Callable] = {"chunk": lambda *x: mlp_memory(*x, **flags, impl="chunk")}
    if compile_:
        impls["chunk + torch.compile"] = torch.compile(impls["chunk"])
    if device == "cuda":
        impls["triton"] = lambda *x: mlp_memory(*x, **flags, impl="triton")
    flops = B * G * T * 2 * (10 * d * h + 3 * CHUNK * d + 3 * CHUNK * h)
    return fwd_bwd_rows("K2", impls, inputs, flops, ms, case=f", B={B} G={G} T={T} d={d} h={h}")


# ---- K1 and K2: fwd and fwd+bwd rows -------------------------------------------------


def fwd_bwd_rows(
    kernel: str,
    impls: dict[str, Callable],
    inputs: list[torch.Tensor],
    flops: int,
    ms,
    case: str = "",
    no_fwd_row: tuple[str, ...] = (),
) -> list[tuple]:
    """Rows timing each impl on `inputs`: forward only (no autograd) and forward + backward
    of the sum of all its outputs; GFLOP/s from `flops` per forward, fwd+bwd counted as 3x.
    `case` is appended to the mode ("fwd", "fwd+bwd") in the case column."""
    rows = []
    for name, fn in impls.items():
        leaves = [x.clone().requires_grad_() for x in inputs]

        def forward(fn=fn):
            with torch.no_grad():
                fn(*inputs)

        def forward_backward(fn=fn, leaves=leaves):
            sum(y.sum() for y in fn(*leaves)).backward()
            for x in leaves:
                x.grad = None

        for mode, run, n_flops in (
            ("fwd", forward, flops),
            ("fwd+bwd", forward_backward, 3 * flops),
        ):
            if mode == "fwd" and name in no_fwd_row:
                continue
            try:
                t = ms(run)
                rows.append((kernel, name, mode + case, t, f"{n_flops / t / 1e6:.1f} GFLOP/s"))
            except Exception as err:  # torch.compile may fail on some setups: report it
                rows.append((kernel, name, mode + case, None, f"failed: {type(err).__name__}"))
    return rows


# ---- K3 ------------------------------------------------------------------------------


def block_shapes(width: int, hidden: int) -> list[tuple[int, ...]]:
    return [(hidden, width), (hidden,), (width, hidden), (width,)]


def k3_rows(device: str, width: int, hidden: int, ms) -> list[tuple]:
    shapes = block_shapes(width, hidden)
    n_params = 4 * sum(torch.Size(s).numel() for s in shapes)
    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(s, generator=g).to(device) for s in shapes] for _ in range(4)]
    impls = ["naive", "chunk"] if device == "cpu" else ["chunk", "triton"]
    rows = []
    for rule_name, (rule, due_bytes) in K3_RULES.items():
        for impl in impls:
            levels = [
                FlatLevel([torch.randn(s, generator=g).to(device) for s in shapes], rule, bind=True)
                for _ in range(4)
            ]

            def step(due: bool, levels=levels, impl=impl):
                for level, level_grads in zip(levels, grads, strict=True):
                    cms_step(level, level_grads, due=due, inv_count=0.25, impl=impl)

            t_acc, t_due = ms(lambda: step(False)), ms(lambda: step(True))
            # levels of equal size: level l adds its update cost once every PERIODS[l] steps
            t_iter = t_acc + (t_due - t_acc) * sum(1 / p for p in PERIODS) / len(PERIODS)
            gbs = [n_params * b / t / 1e6 for b, t in ((12, t_acc), (due_bytes, t_due))]
            label = f"{rule_name}, {n_params / 1e6:.1f}M params"
            rows.append(("K3", impl, f"{label}: accumulate", t_acc, f"{gbs[0]:.1f} GB/s"))
            rows.append(("K3", impl, f"{label}: due", t_due, f"{gbs[1]:.1f} GB/s"))
            rows.append(("K3", impl, f"{label}: per iter (1/4/16/64)", t_iter, ""))
    return rows


# ---- K4 ------------------------------------------------------------------------------

K4_SHAPE = (64, 16)  # DMGD token_dim d and hidden h
K4_WRITE_TOKENS = 1024  # DMGD's default memory_tokens: the rows of one memory write


def k4_rows(device: str, n_elements: int, compile_: bool, ms) -> list[tuple]:
    """DMGD row-MLP: the read over all N = n_elements / d gradient tokens, and the inner
    gradient of each objective on one write's subsample and on all N tokens."""
    d, h = K4_SHAPE
    n = n_elements // d
    g = torch.Generator().manual_seed(0)
    x, target = (torch.randn(n, d, generator=g).to(device) for _ in range(2))
    v = (torch.randn(h, d, generator=g) / d**0.5).to(device)
    u = (0.1 * torch.randn(d, h, generator=g)).to(device)
    # (case, fn(impl), rows, FLOPs per row); bytes: 8 per element for every case (read x,
    # write y / read x and target / read x in each of precond's two passes)
    cases = [(f"read, {n} tokens", lambda impl: dmgd_mlp_read(x, v, u, impl=impl), n, 4 * d * h)]
    for objective in DMGD_OBJECTIVES:
        # forward 4dh, ∇U 2dh, R U 2dh, ∇V 2dh; precond adds its Gram pass (forward 4dh,
        # PᵀP 2d²) and R = P M (2d²)
        flops = 10 * d * h + (4 * d * h + 4 * d * d if objective == "precond" else 0)
        for rows in sorted({min(K4_WRITE_TOKENS, n), n}):
            goal = target[:rows] if objective == "l2_recon" else None

            def grad(impl, rows=rows, objective=objective, goal=goal):
                return dmgd_mlp_inner_grad(
                    x[:rows], v, u, objective=objective, target=goal, impl=impl
                )

            cases.append((f"{objective} inner grad, {rows} tokens", grad, rows, flops))
    impls = ["chunk"] + (["triton"] if device == "cuda" else [])
    rows_out = []
    for case, fn, rows, flops in cases:
        runs = {impl: functools.partial(fn, impl) for impl in impls}
        if compile_:
            runs["chunk + torch.compile"] = torch.compile(runs["chunk"])
        for name, run in runs.items():
            try:
                t = ms(run)
                rate = f"{8 * rows * d / t / 1e6:.1f} GB/s, {rows * flops / t / 1e6:.1f} GFLOP/s"
                rows_out.append(("K4", name, f"{case}, d={d}, h={h}", t, rate))
            except Exception as err:  # torch.compile may fail on some setups: report it
                rows_out.append(("K4", name, case, None, f"failed: {type(err).__name__}"))
    return rows_out


# ---- report --------------------------------------------------------------------------


def machine_info(device: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    info = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
        f"load average (1/5/15 min) at the end: {load}"
    )
    try:
        import triton

        info += f", triton {triton.__version__}"
    except ImportError:
        info += ", triton not installed"
    if device == "cuda":
        info = f"GPU: {torch.cuda.get_device_name()}; " + info
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-small", action="store_true", help="CPU sizes (default without CUDA)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="time torch.compile of the K1 reference; auto = only on CUDA")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cell on CPU")
    parser.add_argument("--out", type=Path, default=HERE / "kernels.md")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.cpu_small else "cpu"
    small = device == "cpu"
    compile_ = args.compile == "on" or (args.compile == "auto" and device == "cuda")
    k1_shape = (8, 256 if small else 2048, 8, 64, 64)
    width, hidden = (256, 488) if small else (1024, 1220)  # 4 levels: 1.0M or 10.0M params
    ms = timer(device, args.runs)

    rows = k1_rows(device, k1_shape, compile_, ms) + k3_rows(device, width, hidden, ms)
    rows += k2_rows(device, (8, 8, 256 if small else 2048, 64, 128), compile_, ms)
    rows += k4_rows(device, 1_000_000 if small else 10_000_000, compile_, ms)
    lines = ["| kernel | impl | case | median ms | throughput |", "|---|---|---|---|---|"]
    for kernel, impl, case, t, rate in rows:
        lines.append(
            f"| {kernel} | {impl} | {case} | {'—' if t is None else f'{t:.3f}'} | {rate} |"
        )
    table = "\n".join(lines)
    print(table)

    B, T, H, K, V = k1_shape
    note = (
        "GPU numbers are not yet measured: this run had no CUDA device, so only the reference "
        "paths appear (Triton rows need CUDA).\n"
        if device == "cpu"
        else ""
    )
    if device == "cpu" and not compile_:
        note += (
            "torch.compile rows skipped (pass `--compile on`; compiling takes minutes on CPU).\n"
        )
    cmd = (
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python benchmarks/kernels.py "
        + " ".join(sys.argv[1:])
    )
    args.out.write_text(
        f"""# Kernel speed (benchmarks/kernels.py)

{datetime.now(timezone.utc).isoformat(timespec="seconds")}, device {device}, fp32.
K1: B={B}, T={T}, H={H}, K={K}, V={V}, chunk {CHUNK}. K3: 4 levels, block {width}->{hidden}->{width}.
Median ms ({"triton.testing.do_bench" if device == "cuda" else f"perf_counter, {args.runs} runs after a warm-up"});
throughput from fixed counts (see the script's docstring), so rows of one case compare directly.

Machine: {machine_info(device)}.

Command: `{cmd.strip()}`

{note}
{table}
"""
    )


if __name__ == "__main__":
    main()
