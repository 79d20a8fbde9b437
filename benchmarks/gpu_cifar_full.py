"""Timing of one full-profile Split CIFAR-100 DER++ cell on the GPU (benchmarks/gpu_cifar_full.sh).

Runs `clbench run split_cifar100 der --profile full` shortened to the first
`--experiences` experiences and `--epochs` epochs (DER++ at Mammoth's buffer-500
settings), once with train.amp off and once on, and writes per configuration:
seconds per epoch, training images per second (stream images x epochs / train
seconds, as result.json's train_samples_per_s), peak GPU memory and the final
accuracies, to $OUT/gpu_cifar_full.json and .md. The 50-epoch cell costs about
10 x 50 / (experiences x epochs) times the measured training time, plus evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def one_cell(amp: bool, experiences: int, epochs: int, out: Path, data_root: str | None) -> dict:
    from clbench.resolve import resolve_config
    from clbench.runner import run_cell

    cfg = resolve_config("split_cifar100", "der", seed=0, profile="full", label=f"derpp_amp{int(amp)}", overrides={
        "device": "cuda", "lr": 0.03, "strategy.mem_size": 500, "strategy.alpha": 0.3, "strategy.beta": 0.5,
        "epochs": epochs, "train.amp": amp,
    })
    # The first `experiences` of the 10-experience stream (the runner's first_k truncation).
    cfg.tuning = {"first_k": experiences}
    t0 = time.perf_counter()
    r = run_cell(cfg, out / "runs", data_root=data_root, download=False, progress=False)
    wall = time.perf_counter() - t0
    n_epochs = experiences * epochs
    return {
        "amp": amp, "status": r["status"], "error": r["error"], "wall_s": round(wall, 2),
        "train_s": round(r["train_seconds"], 2), "eval_s": round(r["eval_seconds"], 2),
        "s_per_epoch": round(r["train_seconds"] / n_epochs, 3),
        "train_images_per_s": round(r["train_samples_per_s"] or 0.0, 1),
        "peak_device_mb": round(r["peak_device_mb"], 1), "num_params": r["num_params"],
        "last_row": r["matrix"][-1] if r["matrix"] else None, "env": r["env"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--experiences", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for amp in (False, True):
        rows.append(one_cell(amp, args.experiences, args.epochs, out, args.data_root))
        (out / "gpu_cifar_full.json").write_text(json.dumps(rows, indent=1))  # saved after each cell
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "env"}), flush=True)
    lines = [f"DER++ (buffer 500), split_cifar100 full profile, first {args.experiences} experiences x "
             f"{args.epochs} epochs, seed 0, {rows[0]['env'].get('device', '?')}", "",
             "| amp | status | s/epoch | train images/s | peak GPU MiB | train s | eval s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['amp']} | {r['status']} | {r['s_per_epoch']} | {r['train_images_per_s']} | "
                     f"{r['peak_device_mb']} | {r['train_s']} | {r['eval_s']} |")
    (out / "gpu_cifar_full.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
