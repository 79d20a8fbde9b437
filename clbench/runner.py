"""Run one cell: (scenario, strategy, seed, config) -> a stored accuracy matrix.

Protocol (avalanche_and_anchors.md §1.5): evaluate the untrained model on every
test experience (the FWT baseline b), then for each training experience call
`strategy.train(exp)` once and evaluate on *every* test experience, giving the
full T x T matrix. Any exception, including a NaN loss, is recorded in the
cell's result with status "failed"; the caller moves on to the next cell.
"""

from __future__ import annotations

import dataclasses
import platform
import random
import socket
import subprocess
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import clbench
from clbench.config import RunConfig
from clbench.errors import CellStopped
from clbench.install_lock import lock_record
from clbench.models import count_parameters
from clbench.registry import MODELS, PLUGINS, SCENARIOS, STRATEGIES
from clbench.store import SCHEMA_VERSION, cell_id, write_result


def seed_everything(seed: int) -> None:
    # A benchmark seed alone only fixes the stream (§1.6 #11): seed every RNG.
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from clbench.errors import ConfigError

        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return torch.device(name)


class PeakMemory:
    """Samples this process's resident memory in a thread (ru_maxrss never goes down,
    so it cannot give a per-cell peak when cells share a process)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def current_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _poll(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak_mb = self.current_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


_GIT_SHA: str | None = None


def environment(device: torch.device) -> dict[str, Any]:
    global _GIT_SHA
    if _GIT_SHA is None:
        try:
            _GIT_SHA = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(clbench.__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            _GIT_SHA = "unknown"
    import avalanche

    return {
        "python": platform.python_version(), "torch": torch.__version__, "avalanche": avalanche.__version__,
        "clbench": clbench.__version__, "device": str(device), "git_sha": _GIT_SHA, "hostname": socket.gethostname(),
        "torch_threads": torch.get_num_threads(), **lock_record(),
        # CPU results repeat bit for bit only under the same kernels: torch dispatches by ISA
        # (AVX2 vs AVX512 reorders float sums), so a rerun on another CPU moves within noise.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu_model(),
    }


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_strategy(cfg: RunConfig, stream, device: torch.device):
    from clbench.strategy_context import StrategyContext

    model = MODELS.get(cfg.model).factory(stream.info, cfg.profile, **cfg.model_args)
    strategy_spec = STRATEGIES.get(cfg.strategy)
    params = strategy_spec.params(**cfg.strategy_args) if strategy_spec.params else None
    plugins = []
    for name in cfg.plugins:
        spec = PLUGINS.get(name)
        options = spec.params(**cfg.plugin_args.get(name, {})) if spec.params else None
        plugins.append(spec.factory(stream.info, cfg, options))
    ctx = StrategyContext(model=model, info=stream.info, config=cfg, params=params, device=device, extra_plugins=plugins)
    return model, strategy_spec.factory(ctx)


def run_cell(
    cfg: RunConfig, run_dir: Path, *, data_root=None, download: bool | None = None, progress: bool = True,
    on_row=None, tracking=(), tracking_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one cell, write its result.json, and return the result.

    `tracking` names trackers (`clbench.tracking.TRACKERS`) that get the cell's training
    loss, learning rates and accuracy rows, under `tracking_dir` (default RUN_DIR/tracking).

    `on_row(progress)`, if given, is called after each experience's evaluation with
    {"experience", "row", "higher_is_better"}; when it returns False the cell stops
    there and is stored as failed (`clbench tune` prunes trials this way).
    """
    from avalanche.training import JointTraining
    from tqdm import tqdm

    from clbench import fastdata
    from clbench.evaluation import evaluate_row
    from clbench.scenarios.datasets import downloads_allowed, resolve_data_root
    from clbench.scenarios.validation import build_stream

    config_hash = cfg.config_hash()
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "cell_id": cell_id(cfg.scenario, cfg.label, cfg.seed, config_hash),
        "scenario": cfg.scenario, "scenario_type": SCENARIOS.get(cfg.scenario).scenario_type,
        "strategy": cfg.strategy, "label": cfg.label, "seed": cfg.seed, "config_hash": config_hash,
        "config": cfg.to_dict(), "metric_name": "accuracy", "higher_is_better": True,
        "matrix": [], "initial": [], "n_experiences": None, "n_test": [],
        "train_seconds": 0.0, "eval_seconds": 0.0, "wall_seconds": 0.0, "train_samples_per_s": None,
        "peak_rss_mb": None, "peak_device_mb": 0.0, "num_params": None, "stored_values": None, "scenario_info": {},
        "cpu_seconds": 0.0, "env": {}, "status": "failed", "error": None, "traceback": None, "started_at": _now(), "finished_at": None,
    }
    wall0, cpu0 = time.perf_counter(), time.process_time()
    memory = PeakMemory()
    tracker = None
    try:
        with memory, fastdata.fast_fetch():
            device = pick_device(cfg.device)
            result["env"] = environment(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seed_everything(cfg.seed)
            stream = build_stream(  # drawn from the stream seed, validation split applied
                SCENARIOS.get(cfg.scenario), cfg.scenario_args, cfg.profile, cfg.seed,
                resolve_data_root(data_root), downloads_allowed(download),
            )
            if cfg.tuning.get("first_k"):
                stream = first_experiences(stream, cfg.tuning["first_k"])
            info = stream.info
            result.update(
                n_experiences=info.n_experiences, n_test=[len(e) for e in stream.test],
                metric_name=info.metric_name, higher_is_better=info.higher_is_better,
                scenario_info={k: v for k, v in info.extra.items() if k != "domain"} | {
                    "classes_per_exp": info.classes_per_exp,
                    "domains": _summarize_domains(info.extra.get("domain")),
                },
            )
            benchmark = stream.to_benchmark()
            anytime = anytime_plugin(cfg, stream, device)
            seed_everything(cfg.seed)  # model init does not depend on how the data was drawn
            model, strategy = build_strategy(cfg, stream, device)
            # The runner's own plugins go after the strategy's: they read the finished step.
            if anytime:
                strategy.plugins.append(anytime)
            if tracking:
                from clbench.tracking.tracker import Tracker

                tracker = Tracker(tracking, cfg, result["cell_id"],
                                  tracking_dir if tracking_dir is not None else Path(run_dir) / "tracking",
                                  metric_name=info.metric_name)
                strategy.plugins.append(tracker.plugin())
            # The model the strategy trains and the runner evaluates (a closed-form strategy
            # brings its own head; its statistics are buffers, reported as stored_values).
            result["num_params"] = count_parameters(strategy.model)
            result["stored_values"] = sum(b.numel() for b in strategy.model.buffers())
            eval_mb = cfg.train.eval_mb_size

            def evaluate() -> list[float]:
                t0 = time.perf_counter()
                row = evaluate_row(
                    strategy.model, stream.test, device=device, batch_size=eval_mb, metric=info.metric_name
                )
                result["eval_seconds"] += time.perf_counter() - t0
                return row

            result["initial"] = initial_row(evaluate, len(stream.test), result)
            if tracker is not None:
                tracker.log_row(None, result["initial"])
            experiences = list(benchmark.train_stream)
            bar = tqdm(total=len(experiences), desc=result["cell_id"][:60], leave=False, disable=not progress)
            if isinstance(strategy, JointTraining):
                # Joint training sees the whole stream once; every row is that model.
                if anytime:
                    anytime.start_experience(len(experiences) - 1, strategy.model, seen=len(experiences))
                t0 = time.perf_counter()
                strategy.train(experiences)
                result["train_seconds"] += time.perf_counter() - t0
                row = evaluate()
                result["matrix"] = [list(row) for _ in experiences]
                if tracker is not None:
                    tracker.log_row(len(experiences) - 1, row)
                bar.update(len(experiences))
            else:
                for index, exp in enumerate(experiences):
                    if anytime:
                        anytime.start_experience(index, strategy.model)
                    t0 = time.perf_counter()
                    strategy.train(exp)
                    result["train_seconds"] += time.perf_counter() - t0
                    result["matrix"].append(evaluate())
                    if tracker is not None:
                        tracker.log_row(len(result["matrix"]) - 1, result["matrix"][-1])
                    bar.update(1)
                    if on_row is not None and on_row({"experience": len(result["matrix"]) - 1,
                                                      "row": result["matrix"][-1],
                                                      "higher_is_better": info.higher_is_better}) is False:
                        raise CellStopped(f"stopped by the caller after experience {len(result['matrix']) - 1}")
            bar.close()
            if anytime:
                anytime.finish(strategy.model)
                result["anytime"] = anytime.curve()
                # The curve was evaluated inside strategy.train: its time is not the method's.
                result["train_seconds"] -= anytime.seconds_in_training
            # Throughput of the stream itself (replayed or regularisation passes are part of
            # the method's cost, so they lower it rather than count as samples).
            stream_samples = cfg.train.epochs * sum(len(e) for e in stream.train)
            result["train_samples_per_s"] = stream_samples / max(result["train_seconds"], 1e-9)
            if device.type == "cuda":
                result["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["status"] = "ok"
    except Exception as exc:  # recorded, never raised: one cell must not lose the others
        result["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        result["traceback"] = traceback.format_exc()
    if tracker is not None:
        try:
            tracker.close(failed=result["status"] != "ok")
        except Exception as exc:  # the user asked for these logs: losing them fails the cell
            result.update(status="failed", error=f"tracking: {type(exc).__name__}: {exc}".splitlines()[0][:500],
                          traceback=traceback.format_exc())
        result["tracking_seconds"] = tracker.cost()  # a timing: results stay equal with and without --log
    result["peak_rss_mb"] = round(memory.peak_mb, 1)
    result["wall_seconds"] = time.perf_counter() - wall0
    result["cpu_seconds"] = time.process_time() - cpu0  # this process's CPU time, all its threads
    result["finished_at"] = _now()
    write_result(Path(run_dir), result)
    return result


def anytime_plugin(cfg: RunConfig, stream, device: torch.device):
    """The anytime-evaluation plugin when `train.eval_every` > 0, else None."""
    if not cfg.train.eval_every:
        return None
    from clbench.anytime import AnytimeEvaluation, fixed_subsets

    subsets = fixed_subsets(stream.test, cfg.train.eval_subset, cfg.seed)
    return AnytimeEvaluation(subsets, cfg.train.eval_every, device=device,
                             batch_size=cfg.train.eval_mb_size, metric=stream.info.metric_name)


def first_experiences(stream, k: int):
    """The first k experiences of a built stream (`clbench tune --protocol first_k`).

    Truncated after building, so permutations and class order are those of the
    full stream; the model keeps the full stream's output size."""
    from clbench.errors import ConfigError

    info = stream.info
    if not 1 <= k < info.n_experiences:
        raise ConfigError(f"bad first_k {k}; accepted: 1 to {info.n_experiences - 1} (the stream has "
                          f"{info.n_experiences} experiences)")
    extra = {key: (v[:k] if key == "domain" and isinstance(v, list) else v) for key, v in info.extra.items()}
    info = dataclasses.replace(info, n_experiences=k, classes_per_exp=info.classes_per_exp[:k], extra=extra)
    # Every per-experience list (train, test, and any other split a stream carries) loses its tail.
    lists = {f.name: getattr(stream, f.name)[:k] for f in dataclasses.fields(stream)
             if isinstance(getattr(stream, f.name), list)}
    return dataclasses.replace(stream, info=info, **lists)


def initial_row(evaluate, n_experiences: int, result: dict[str, Any]) -> list[float]:
    """The untrained model's metric (the FWT baseline b).

    Some models cannot predict before training at all (iCaRL's nearest-mean
    classifier has no class means yet): b is then undefined, stored as NaN,
    and FWT comes out as NaN rather than as a made-up number.
    """
    try:
        return evaluate()
    except (AssertionError, RuntimeError, ValueError) as exc:
        result["initial_error"] = f"{type(exc).__name__}: {exc}"
        return [float("nan")] * n_experiences


def _summarize_domains(domains):
    """Angles are short; permutations are stored as a checksum to keep results small."""
    if not domains:
        return None
    import hashlib

    out = []
    for d in domains:
        if "permutation" in d:
            out.append({"permutation_sha256": hashlib.sha256(str(d["permutation"]).encode()).hexdigest()[:16]})
        else:
            out.append(d)
    return out
