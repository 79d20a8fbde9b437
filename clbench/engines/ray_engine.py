"""The Ray engine: every cell is one Ray task with `--cpus-per-cell` / `--gpus-per-cell`.

Results travel back to the driver, which writes each result.json atomically
into the run dir. So the run dir only needs to be on the driver's disk; what
every node needs is the data (the same data root path, or downloads allowed)
and clbench itself. Plugin files are shipped with each task, by content.

Ray retries a task whose worker process or node died (`max_retries` =
`--retries`); after the last retry the driver stores the cell as failed and
the suite goes on. A cell past `--cell-timeout` (counted from submission: the
driver submits no more tasks than the cluster has slots for) is cancelled,
which kills its worker, and stored as failed. Ray is imported only here, only
when `--engine ray` is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clbench.engines import EngineOptions, Report, apply_determinism, record_failure
from clbench.errors import ClbenchError
from clbench.locking import WAIT, ClaimQueue

POLL_S = 0.2
MISSING_RAY = "--engine ray needs Ray, which is not installed; install the extra: pip install 'clbench[dist]'"


# For a Ray instance that clbench starts itself (no --address): local only, so Ray binds
# its services to 127.0.0.1 rather than this machine's network address (the variable
# governs that on every OS, despite its name), and sends no usage statistics. Ray reads
# both when it is imported, so they are set before that; a user's own values win.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray(*, local: bool = False):
    if local and "ray" not in sys.modules:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError as exc:
        raise ClbenchError(MISSING_RAY) from exc
    return ray


def ray_cell(cfg_dict: dict[str, Any], data_root: str, download: bool, plugins: list[tuple[str, str]],
             threads: int, deterministic: bool, tracking: tuple[str, ...] = (),
             tracking_dir: str | None = None) -> dict[str, Any]:
    """The task body: one cell in a Ray worker, its result returned to the driver."""
    import torch

    from clbench.sys_path_guard import drop_repo_root

    drop_repo_root()  # Ray adds the driver's cwd to each worker's sys.path, possibly after clbench's import

    from clbench.config import RunConfig
    from clbench.registry import load_plugin_file
    from clbench.runner import run_cell

    torch.set_num_threads(threads)
    apply_determinism(deterministic)
    for name, source in plugins:
        load_plugin_file(_materialize_plugin(name, source))
    with tempfile.TemporaryDirectory(prefix="clbench_cell_") as scratch:
        # Tracking files go to the driver's RUN_DIR/tracking path on the node that runs the cell
        # (the driver's own disk on one machine), not to the scratch folder that is deleted.
        return run_cell(RunConfig.from_dict(cfg_dict), Path(scratch), data_root=data_root, download=download,
                        progress=False, tracking=tracking, tracking_dir=tracking_dir and Path(tracking_dir))


def _materialize_plugin(name: str, source: str) -> Path:
    """The plugin's source at a path fixed by its content, so a reused worker imports it once."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "clbench_ray_plugins" / digest / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(source)
        tmp.replace(path)
    return path


@contextmanager
def ray_session(options: EngineOptions):
    """Ray, connected: to `--address`, to a session this process already has, or to a
    local instance started here (and shut down on leaving)."""
    ray = import_ray(local=options.address is None)
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {options.address!r}" if options.address else "a local Ray instance"
            raise ClbenchError(f"cannot start or reach {where}: {exc}".splitlines()[0]) from exc
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _slots(ray, options: EngineOptions) -> int:
    """How many cells the cluster can run at once with the requested resources."""
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) // options.cpus_per_cell)
    if options.gpus_per_cell > 0:
        slots = min(slots, int(resources.get("GPU", 0) // options.gpus_per_cell))
    if slots < 1:
        raise ClbenchError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs: not "
            f"enough for one cell with --cpus-per-cell {options.cpus_per_cell:g} --gpus-per-cell {options.gpus_per_cell:g}"
        )
    return slots


def run_on_ray(queue: ClaimQueue, report: Report, run_dir: Path, *, data_root, download, options: EngineOptions,
               plugin_files: list[str], progress: bool, on_start=None) -> None:
    from clbench.scenarios.datasets import downloads_allowed, resolve_data_root

    ray = import_ray()  # connected by ray_session
    slots = _slots(ray, options)
    remote = ray.remote(ray_cell).options(
        num_cpus=options.cpus_per_cell, num_gpus=options.gpus_per_cell, max_retries=options.retries,
        retry_exceptions=False,
    )
    # Resolved here: a worker on another node has neither our cwd nor our environment.
    shared = (str(resolve_data_root(data_root)), downloads_allowed(download),
              [(Path(p).name, Path(p).read_text()) for p in plugin_files],
              max(1, int(options.cpus_per_cell)), options.deterministic,
              options.log, str(Path(run_dir).resolve() / "tracking"))
    in_flight: dict[Any, tuple[Any, float]] = {}
    try:
        _schedule(ray, remote, shared, slots, in_flight, queue, report, run_dir, options, on_start)
    finally:  # interrupted or failed: nothing of ours keeps running on a cluster that stays up
        for ref in in_flight:
            ray.cancel(ref, force=True)


def _schedule(ray, remote, shared, slots: int, in_flight: dict, queue: ClaimQueue, report: Report, run_dir: Path,
              options: EngineOptions, on_start) -> None:
    """Keep one cell per slot in flight until the queue is empty and every cell is stored."""
    queue_done = False
    while True:
        while not queue_done and len(in_flight) < slots:
            task = queue.next()
            if task is None:
                queue_done = True
            elif task == WAIT:
                break
            else:
                if on_start:
                    on_start(task)
                in_flight[remote.remote(task.cfg.to_dict(), *shared)] = (task, time.monotonic())
        if not in_flight:
            if queue_done:
                return
            time.sleep(POLL_S)
            continue
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
        if ready and len(in_flight) > 1:  # take everything else that is done by now, too
            ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
        for ref in ready:
            task, _ = in_flight.pop(ref)
            _store(ray, ref, task, run_dir, report, options)
        _cancel_overdue(ray, in_flight, run_dir, report, options)


def _store(ray, ref, task, run_dir: Path, report: Report, options: EngineOptions) -> None:
    from clbench.store import write_result

    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # raised by our code in the task, outside run_cell
        cause = getattr(exc, "cause", None) or exc
        error = f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    except ray.exceptions.RayError as exc:  # the worker or its node died, after every retry
        error = (f"WorkerDied: the Ray worker running this cell died {options.retries + 1} time(s) "
                 f"({type(exc).__name__}); retries are set to {options.retries}")
    else:
        write_result(run_dir, result)
        report(task, result["status"], result["error"])
        return
    record_failure(run_dir, task.cfg, task.cell_id, error)
    report(task, "failed", error)


def _cancel_overdue(ray, in_flight: dict, run_dir: Path, report: Report, options: EngineOptions) -> None:
    if not options.cell_timeout:
        return
    now = time.monotonic()
    for ref, (task, submitted) in list(in_flight.items()):
        if now - submitted > options.cell_timeout:
            ray.cancel(ref, force=True)  # kills the worker process that runs it
            del in_flight[ref]
            error = f"CellTimeout: the cell ran longer than --cell-timeout {options.cell_timeout:g} s and was killed"
            record_failure(run_dir, task.cfg, task.cell_id, error)
            report(task, "failed", error)
