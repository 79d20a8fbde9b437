"""Engines run the claimed cells of a suite: `local` (in this process, or N worker
processes) and `ray` (one Ray task per cell). They share what is here.

An engine takes cells from a `ClaimQueue`, makes sure each cell ends with a
stored result.json (the cell's own, or a failed record that it writes when the
cell could not write one: a dead worker, a timeout), then calls `report`, which
releases the claim. So a claim is never dropped before the result is on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clbench.errors import ConfigError

ENGINES = ("local", "ray")


def worker_init(plugin_files: list[str], threads: int) -> None:
    """Set up a worker process: its torch threads and the suite's plugin files."""
    import torch

    from clbench.registry import load_plugin_file

    torch.set_num_threads(threads)
    for path in plugin_files:
        load_plugin_file(path)


@dataclass
class EngineOptions:
    """How cells run; none of it changes what a cell computes, so none is in the config hash."""

    engine: str = "local"
    jobs: int = 1  # local: worker processes (1 = in this process unless cell_timeout is set)
    cell_timeout: float | None = None  # seconds; a cell past it is killed and stored as failed
    retries: int = 2  # re-runs of a cell whose worker process died
    deterministic: bool = False  # torch deterministic algorithms (see docs/cluster.md)
    address: str | None = None  # ray: cluster address ("auto", "HOST:PORT"); None starts a local one
    cpus_per_cell: float = 1.0  # ray
    gpus_per_cell: float = 0.0  # ray
    # Trackers every cell logs to (`--log`, clbench.tracking), under RUN_DIR/tracking: what a
    # cell reports, not what it computes.
    log: tuple[str, ...] = ()

    def validate(self) -> None:
        from clbench.tracking import parse_log

        self.log = parse_log(self.log)
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; accepted: {', '.join(ENGINES)}")
        if self.jobs < 1:
            raise ConfigError(f"bad --jobs {self.jobs}; must be >= 1")
        if self.cell_timeout is not None and not self.cell_timeout > 0:
            raise ConfigError(f"bad --cell-timeout {self.cell_timeout}; must be a number of seconds > 0")
        if self.retries < 0:
            raise ConfigError(f"bad --retries {self.retries}; must be >= 0")
        if not self.cpus_per_cell > 0 or not self.gpus_per_cell >= 0:
            raise ConfigError(
                f"bad --cpus-per-cell {self.cpus_per_cell} / --gpus-per-cell {self.gpus_per_cell}; "
                "CPUs must be > 0 and GPUs >= 0"
            )


# report(task, status, error): store the outcome and release the cell's claim.
Report = Callable[[object, str, "str | None"], None]


def apply_determinism(enabled: bool) -> None:
    """Make torch refuse nondeterministic kernels (or allow them again).

    cuBLAS reads CUBLAS_WORKSPACE_CONFIG when its handle is created, so this
    must run before the first CUDA matmul of the process; engines call it when
    a worker starts. On CPU, results are already bit-identical for a fixed
    thread count; this only matters on GPUs (docs/cluster.md lists the ops).
    """
    import torch

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark


def record_failure(run_dir: Path, cfg, cid: str, error: str) -> None:
    """A failed result for a cell that could not write its own (killed, timed out, lost)."""
    from clbench.runner import _now
    from clbench.store import SCHEMA_VERSION, write_result

    write_result(run_dir, {
        "schema_version": SCHEMA_VERSION, "cell_id": cid, "scenario": cfg.scenario, "strategy": cfg.strategy,
        "label": cfg.label, "seed": cfg.seed, "config_hash": cfg.config_hash(), "config": cfg.to_dict(),
        "status": "failed", "error": error, "traceback": None, "matrix": [], "initial": [], "finished_at": _now(),
    })
