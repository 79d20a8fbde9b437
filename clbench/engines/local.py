"""The local engine: cells in this process, or in N worker processes.

Workers are long-lived (torch and Avalanche are imported once per worker) and
each runs one cell at a time over its own pipe, so the driver always knows
which cell a worker holds. That is what makes a dead worker or a cell past
`--cell-timeout` a failure of that one cell: the driver kills or buries the
worker, stores the cell as failed (or retries it after a crash), starts a
fresh worker, and the suite goes on. Workers die with the driver
(PR_SET_PDEATHSIG on Linux), so a killed suite leaves no cell running.

Workers are forked from a `forkserver` that has imported torch and Avalanche
once (about 8 s of imports), so starting or replacing a worker costs
milliseconds; the server has run no torch op, so it holds no thread pool that
a fork could copy half-way. Each worker takes the driver's environment as it
is when the worker starts, not as it was when the server started; only what
the preloaded modules read at import time comes from the server's start (the
first pool of the driver process).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from clbench.engines import EngineOptions, Report, apply_determinism, record_failure
from clbench.errors import ClbenchError
from clbench.locking import WAIT, CellTask, ClaimQueue

POLL_S = 0.2
MAX_FAILED_STARTS = 3
# Imported once by the fork server (registering every built-in component), not by each worker.
PRELOAD = ["clbench.runner", "clbench.models", "clbench.anchor_models", "clbench.optimizers", "clbench.nested",
           "clbench.scenarios", "clbench.strategies", "avalanche.training"]


def run_in_process(queue: ClaimQueue, report: Report, run_dir: Path, *, data_root, download,
                   options: EngineOptions, progress: bool, on_start=None, on_row=None) -> None:
    """Sequential: each cell in this process (no timeout possible without a worker)."""
    from clbench.runner import run_cell

    if options.deterministic:  # process-wide: left on afterwards, never switched off behind the caller
        apply_determinism(True)
    while (task := queue.next()) is not None:
        if task == WAIT:
            time.sleep(POLL_S)
            continue
        if on_start:
            on_start(task)
        cell_on_row = None if on_row is None else (lambda progress, task=task: on_row(task, progress))
        result = run_cell(task.cfg, run_dir, data_root=data_root, download=download, progress=progress,
                          on_row=cell_on_row, tracking=options.log)
        report(task, result["status"], result["error"])


# --------------------------------------------------------------------------- worker side
def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (no orphan keeps running a cell).

    The parent is the fork server, which exits as soon as the driver does."""
    parent_pid = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: an orphan finishes its cell, whose write is atomic anyway
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(conn: Connection, environ: dict[str, str], plugin_files: list[str], threads: int,
                 deterministic: bool) -> None:
    from clbench.engines import worker_init

    _die_with_parent()
    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    import threading

    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a killed worker would leak.
    tqdm.set_lock(threading.RLock())
    worker_init(plugin_files, threads)
    apply_determinism(deterministic)
    from clbench.config import RunConfig
    from clbench.runner import run_cell

    def send_row(progress) -> bool:  # the driver answers each row: go on, or stop the cell
        conn.send(("row", progress))
        return conn.recv() == "go"

    conn.send("ready")
    while (job := conn.recv()) is not None:
        cfg_dict, run_dir, data_root, download, want_rows, tracking = job
        result = run_cell(RunConfig.from_dict(cfg_dict), Path(run_dir), data_root=data_root, download=download,
                          progress=False, on_row=send_row if want_rows else None, tracking=tracking)
        conn.send((result["status"], result["error"]))


# --------------------------------------------------------------------------- driver side
def start_fork_server() -> None:
    """Start the fork server now: its imports then overlap the driver's own (2 cores: ~8 s saved)."""
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


@dataclass
class _Worker:
    process: Any
    conn: Connection
    ready: bool = False
    task: CellTask | None = None
    started: float = 0.0


@dataclass
class WorkerPool:
    """`jobs` workers; `run` feeds them claimed cells until the queue is empty."""

    jobs: int
    plugin_files: list[str]
    threads: int
    deterministic: bool
    workers: list[_Worker] = field(default_factory=list)
    failed_starts: int = 0  # workers in a row that died before they were ready

    def __post_init__(self):
        # Not a plain fork of the driver: its torch and Avalanche may hold thread pools.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self.workers = [self._start() for _ in range(self.jobs)]

    def _start(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, daemon=True,
            args=(child, dict(os.environ), self.plugin_files, self.threads, self.deterministic),
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    def _replace(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self.failed_starts = 0 if worker.ready else self.failed_starts + 1
        if self.failed_starts > MAX_FAILED_STARTS:
            raise ClbenchError(
                f"worker processes die before they are ready (last exit code {worker.process.exitcode}); "
                "run with --jobs 1 to see the error"
            )
        self.workers[self.workers.index(worker)] = self._start()

    def close(self) -> None:
        for w in self.workers:
            try:
                if w.ready and w.task is None:
                    w.conn.send(None)  # finish cleanly
                    continue
            except OSError:
                pass  # it has just died
            w.process.kill()  # busy (we are being interrupted) or still starting
        for w in self.workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()


def run_in_pool(queue: ClaimQueue, report: Report, run_dir: Path, *, data_root, download, options: EngineOptions,
                plugin_files: list[str], progress: bool, on_start=None, on_row=None) -> None:
    import torch

    # The driver's thread budget (OMP_NUM_THREADS or the core count) split between the
    # workers; a fixed count per cell is also what keeps CPU results bit-identical.
    threads = max(1, torch.get_num_threads() // options.jobs)
    pool = WorkerPool(options.jobs, list(plugin_files), threads, options.deterministic)
    retry: deque[CellTask] = deque()  # cells whose worker died, still under this process's claim
    attempts: dict[str, int] = {}
    queue_done = False
    try:
        while True:
            for worker in pool.workers:
                if not (worker.ready and worker.task is None):
                    continue
                task = retry.popleft() if retry else (None if queue_done else queue.next())
                if task is None:
                    queue_done = True
                    break
                if task == WAIT:
                    break
                worker.task, worker.started = task, time.monotonic()
                attempts[task.cell_id] = attempts.get(task.cell_id, 0) + 1
                if on_start:
                    on_start(task)
                try:
                    worker.conn.send((task.cfg.to_dict(), str(run_dir), data_root, download, on_row is not None,
                                      options.log))
                except OSError:
                    pass  # the worker just died: handled below as a crash of this cell
            if queue_done and not retry and all(w.task is None for w in pool.workers):
                return
            _wait_for_events(pool, options, run_dir, report, retry, attempts, on_row)
    finally:
        pool.close()


def _wait_for_events(pool: WorkerPool, options: EngineOptions, run_dir: Path, report: Report,
                     retry: deque, attempts: dict[str, int], on_row=None) -> None:
    """Handle whatever happened within POLL_S: results, dead workers, timeouts."""
    handles = [w.conn for w in pool.workers] + [w.process.sentinel for w in pool.workers]
    wait(handles, timeout=POLL_S)
    now = time.monotonic()
    for worker in list(pool.workers):
        if worker.conn.poll():
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                message = None
            if message == "ready":
                worker.ready = True
                continue
            if isinstance(message, tuple) and message[0] == "row":  # a running cell's progress
                keep = on_row is None or on_row(worker.task, message[1]) is not False
                try:
                    worker.conn.send("go" if keep else "stop")
                except OSError:
                    pass  # it has just died: handled on the next round
                continue
            if message is not None:
                task, worker.task = worker.task, None
                report(task, *message)
                continue
        if not worker.process.is_alive():
            task = worker.task
            pool._replace(worker)
            if task is None:
                continue
            code = worker.process.exitcode
            if attempts[task.cell_id] <= options.retries:
                retry.append(task)
                continue
            error = (f"WorkerDied: the worker process running this cell died (exit code {code}) "
                     f"{attempts[task.cell_id]} time(s); retries are set to {options.retries}")
            record_failure(run_dir, task.cfg, task.cell_id, error)
            report(task, "failed", error)
        elif worker.task is not None and options.cell_timeout and now - worker.started > options.cell_timeout:
            task = worker.task
            pool._replace(worker)
            error = f"CellTimeout: the cell ran longer than --cell-timeout {options.cell_timeout:g} s and was killed"
            record_failure(run_dir, task.cfg, task.cell_id, error)
            report(task, "failed", error)
