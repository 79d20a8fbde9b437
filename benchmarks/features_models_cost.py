"""CPU cost of the Nested Learning rows on the pretrained-feature track (split_cifar100_features).

Models at the quick profile on synthetic inputs of the scenario's shapes: hope, hope_attention and
the size control transformer_matched on T = 16 (128 px) and T = 25 (160 px) MobileNetV2 tokens of
dim 1280; cms_mlp and the baselines' mlp on the pooled [1280] vector; 100 classes (class-IL).
For each: training samples/s of one iteration (zero_grad, forward, backward, Adam step) at batch 32
and evaluation samples/s (no_grad forward) at the runner's eval batch 1024. Configurations are
interleaved round by round and the median over rounds is reported, so a load change on the shared
machine hits all of them alike. One intra-op thread, as `make bench` runs its cells.

From the hope rate it derives what a hope cell affords: training samples per experience for
10 experiences x 1 epoch within BUDGET_S, and the evaluation cost of the runner's accuracy matrix
(initial row + one row per experience, each over the whole test set).

    .venv/bin/python benchmarks/features_models_cost.py             # writes benchmarks/features_models_cost.md
    .venv/bin/python benchmarks/features_models_cost.py --rounds 5  # steadier numbers
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from clbench.models import build_mlp, count_parameters
from clbench.nested.cms import build_cms_mlp
from clbench.nested.hope.zoo import build_hope, build_hope_attention, build_transformer_matched
from clbench.scenarios.stream import ScenarioInfo

HERE = Path(__file__).resolve().parent
DIM, CLASSES, EXPERIENCES, TRAIN_BATCH, EVAL_BATCH = 1280, 100, 10, 32, 1024
TEST_SETS, TRAIN_AVAILABLE, BUDGET_S = (10_000, 5_000), 5_000, 90.0


def info(shape) -> ScenarioInfo:
    return ScenarioInfo("split_cifar100_features", "class_il", EXPERIENCES, CLASSES, tuple(shape),
                        [list(range(10 * i, 10 * i + 10)) for i in range(EXPERIENCES)])


def configs() -> list[tuple[str, str, object, tuple]]:
    """(row label, model, builder, input shape); hope rows at the quick default and wider widths."""
    rows = []
    for t in (16, 25):
        shape = (t, DIM)
        rows += [
            (f"hope T={t}", "hope", lambda i: build_hope(i, "quick"), shape),
            (f"hope d=32 T={t}", "hope", lambda i: build_hope(i, "quick", d_model=32), shape),
            (f"hope d=64 T={t}", "hope", lambda i: build_hope(i, "quick", d_model=64), shape),
            (f"transformer_matched T={t}", "transformer_matched", lambda i: build_transformer_matched(i, "quick"), shape),
            (f"hope_attention T={t}", "hope_attention", lambda i: build_hope_attention(i, "quick"), shape),
        ]
    rows += [
        ("cms_mlp [1280]", "cms_mlp", lambda i: build_cms_mlp(i, "quick"), (DIM,)),
        ("mlp [1280]", "mlp", lambda i: build_mlp(i, "quick"), (DIM,)),
    ]
    return rows


def train_rate(model, shape, iters: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(TRAIN_BATCH, *shape) * 6  # post-ReLU6 scale, as MobileNetV2's last map
    y = torch.randint(0, CLASSES, (TRAIN_BATCH,))
    for _ in range(2):  # warm-up: allocator, Adam state
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    t0 = time.perf_counter()
    for _ in range(iters):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return iters * TRAIN_BATCH / (time.perf_counter() - t0)


@torch.no_grad()
def eval_rate(model, shape) -> float:
    x = torch.rand(EVAL_BATCH, *shape) * 6
    model(x[:8])
    t0 = time.perf_counter()
    model(x)
    return EVAL_BATCH / (time.perf_counter() - t0)  # one full eval batch; rounds give the median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="timed training iterations per round")
    parser.add_argument("--out", type=Path, default=HERE / "features_models_cost.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = configs()
    models = [(label, name, build(info(shape)), shape) for label, name, build, shape in rows]
    train = {label: [] for label, *_ in models}
    evals = {label: [] for label, *_ in models}
    for r in range(args.rounds):
        for label, _, model, shape in models:
            model.train()
            train[label].append(train_rate(model, shape, args.iters))
            model.eval()
            evals[label].append(eval_rate(model, shape))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    lines = [
        "# CPU cost of the models on the pretrained-feature track",
        "",
        f"`benchmarks/features_models_cost.py --rounds {args.rounds} --iters {args.iters}`, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        "1 intra-op thread, on a 2-core machine shared with other jobs (medians over interleaved rounds). "
        f"Synthetic inputs of the scenario's shapes; {CLASSES}-way class-IL head; quick profile unless a width "
        f"is named. Train: zero_grad + forward + backward + Adam step at batch {TRAIN_BATCH}. "
        f"Eval: no_grad forward at batch {EVAL_BATCH} (the runner's eval_mb_size).",
        "",
        "| model | input | parameters | train samples/s | eval samples/s |",
        "|---|---|---:|---:|---:|",
    ]
    med = {}
    for label, _name, model, shape in models:
        med[label] = (statistics.median(train[label]), statistics.median(evals[label]))
        lines.append(f"| {label.split(' [')[0].rsplit(' T=', 1)[0]} | {list(shape)} | {count_parameters(model):,} | "
                     f"{med[label][0]:,.0f} | {med[label][1]:,.0f} |")
    lines += [
        "",
        f"## What a cell affords ({EXPERIENCES} experiences x 1 epoch, {BUDGET_S:.0f} s single-threaded)",
        "",
        f"The runner evaluates the whole test set before training and after each experience: {EXPERIENCES + 1} "
        f"passes, {(EXPERIENCES + 1) * TEST_SETS[0]:,} forwards per cell on the full {TEST_SETS[0]:,}-sample test "
        f"set. Training samples per experience are what the {BUDGET_S:.0f} s leave after evaluation, capped at the "
        f"{TRAIN_AVAILABLE:,} available; model compute only (the strategy loop and the multi-rate bookkeeping "
        "add a few percent).",
        "",
        "| model | input | " + " | ".join(f"eval s / cell ({n:,} test) | train samples / exp ({n:,} test)"
                                        for n in TEST_SETS) + " |",
        "|---|---|" + "---:|---:|" * len(TEST_SETS),
    ]
    for label, _name, _model, shape in models:
        tr, ev = med[label]
        cells = []
        for n in TEST_SETS:
            eval_s = (EXPERIENCES + 1) * n / ev
            per_exp = max(0, min(TRAIN_AVAILABLE, int((BUDGET_S - eval_s) * tr / EXPERIENCES)))
            cells += [f"{eval_s:.1f}", f"{per_exp:,}"]
        lines.append(f"| {label.split(' [')[0].rsplit(' T=', 1)[0]} | {list(shape)} | {' | '.join(cells)} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
