"""Synthetic run directories that follow the result.json schema (version 1).

Used by the report tests and `benchmarks/report_speed.py`, and handy to try the
report layer without training anything. Values are plausible, not real: each
strategy has a plasticity and a per-step forgetting rate, plus seeded noise, so
the output is identical on every machine (seeds come from CRC32, not `hash`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

# strategy: (accuracy right after learning, loss per later experience, seconds per experience)
PROFILES = {
    "naive": (0.95, 0.15, 2.0),
    "ewc": (0.90, 0.07, 2.6),
    "si": (0.90, 0.08, 2.4),
    "lwf": (0.92, 0.09, 2.8),
    "replay": (0.94, 0.04, 3.1),
    "agem": (0.93, 0.10, 3.3),
    "der": (0.94, 0.03, 4.0),
    "gdumb": (0.80, 0.00, 1.5),
    "hope": (0.93, 0.05, 5.0),
    "joint": (0.97, 0.00, 9.0),
}


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, parts)).encode()))


def _profile(strategy: str) -> tuple[float, float, float]:
    if strategy in PROFILES:
        return PROFILES[strategy]
    r = _rng("profile", strategy)
    return (float(r.uniform(0.85, 0.95)), float(r.uniform(0.02, 0.12)), float(r.uniform(1.5, 5)))


def accuracy_matrix(strategy: str, T: int, rng: np.random.Generator) -> np.ndarray:
    plastic, rate, _ = _profile(strategy)
    R = np.empty((T, T))
    for i in range(T):
        for j in range(T):
            if strategy == "joint":
                R[i, j] = plastic  # joint trains once on everything: rows are the same
            elif j <= i:
                R[i, j] = plastic - rate * (i - j)
            else:
                R[i, j] = 0.1  # not trained yet: chance level for 10 classes
    if strategy == "joint":
        return np.clip(R + rng.normal(0, 0.01, size=T)[None, :], 0, 1)
    return np.clip(R + rng.normal(0, 0.01, size=(T, T)), 0, 1)


def synthetic_result(
    scenario: str,
    strategy: str,
    seed: int,
    T: int = 5,
    *,
    label: str | None = None,
    metric_name: str = "accuracy",
    higher_is_better: bool = True,
    config_hash: str | None = None,
) -> dict[str, Any]:
    """One `ok` cell. Loss-like metrics map accuracy a to a loss 1 + 2.5 (1 - a)."""
    label = label or strategy
    rng = _rng(scenario, label, seed)
    acc = accuracy_matrix(strategy, T, rng)
    initial = np.clip(0.1 + rng.normal(0, 0.01, size=T), 0, 1)
    if not higher_is_better:
        acc, initial = 1.0 + 2.5 * (1.0 - acc), 1.0 + 2.5 * (1.0 - initial)
    config_hash = config_hash or f"{zlib.crc32(f'{scenario}|{label}'.encode()):010x}"[:10]
    seconds = _profile(strategy)[2] * T * float(rng.uniform(0.9, 1.1))
    return {
        "schema_version": 1,
        "cell_id": f"{scenario}__{label}__seed{seed}__{config_hash}",
        "scenario": scenario,
        "scenario_type": "domain_il" if "pmnist" in scenario else "class_il",
        "strategy": strategy,
        "label": label,
        "seed": seed,
        "config_hash": config_hash,
        "config": {"scenario": scenario, "strategy": strategy, "seed": seed, "label": label},
        "metric_name": metric_name,
        "higher_is_better": higher_is_better,
        "matrix": np.round(acc, 6).tolist(),
        "initial": np.round(initial, 6).tolist(),
        "n_experiences": T,
        "n_test": [1000] * T,
        "train_seconds": round(0.8 * seconds, 3),
        "eval_seconds": round(0.15 * seconds, 3),
        "wall_seconds": round(seconds, 3),
        "peak_rss_mb": round(1500 + 40 * T + float(rng.uniform(0, 50)), 1),
        "peak_device_mb": 0.0,
        "num_params": 199_210 + (50_000 if strategy == "hope" else 0),
        "train_samples_per_s": round(5 * 1000 / (0.8 * seconds), 1) if seconds > 0 else None,
        "scenario_info": {"n_classes": 10},
        "env": {"python": "3.11", "device": "cpu", "clbench": "synthetic"},
        "status": "ok",
        "error": None,
        "traceback": None,
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:01:00Z",
    }


def write_result(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write `result` to RUN_DIR/cells/<cell_id>/result.json (NaN written as NaN)."""
    path = Path(run_dir) / "cells" / result["cell_id"] / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def write_synthetic_run(
    run_dir: str | Path,
    scenarios: Iterable[str] = ("pmnist", "split_mnist"),
    strategies: Iterable[str] = ("naive", "ewc", "replay", "joint"),
    seeds: Iterable[int] = (0, 1, 2),
    T: int = 5,
    **kwargs: Any,
) -> list[Path]:
    """One cell per scenario x strategy x seed; `kwargs` go to `synthetic_result`."""
    return [
        write_result(run_dir, synthetic_result(sc, st, seed, T, **kwargs))
        for sc in scenarios
        for st in strategies
        for seed in seeds
    ]


def result_with_matrix(
    scenario: str,
    label: str,
    seed: int,
    matrix: list[list[float | None]],
    initial: list[float] | None = None,
    *,
    strategy: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A valid `ok` cell with a hand-written matrix; `overrides` replace any other field."""
    T = len(matrix)
    result = synthetic_result(scenario, strategy or label, seed, T, label=label)
    result.update(matrix=matrix, initial=initial if initial is not None else [0.1] * T)
    result.update(overrides)
    result["cell_id"] = f"{scenario}__{label}__seed{seed}__{result['config_hash']}"
    return result
