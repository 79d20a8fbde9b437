"""Per-cell claims, so that several `clbench bench` processes can share one run dir.

A process runs a cell only while it holds an exclusive `flock` on
`RUN_DIR/.claims/<cell_id>.lock`. The kernel drops the lock when its holder
exits, however it dies (SIGKILL included), so a claim can never go stale and
a resumed or second process simply takes the cell over. After taking a claim
the process looks at the cell's result again: if another process stored it
since this one started, the cell is left alone (no cell runs twice).

On a network file system, flock is only as good as the server's locking (NFSv4
and NFSv3 with lockd are fine on Linux); see docs/cluster.md.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clbench.store import is_done, result_path

CLAIMS_DIR = ".claims"
RETRY_BUSY_S = 0.2  # how often cells held by another process are tried again
WAIT = "wait"  # ClaimQueue.next(): only cells held elsewhere are left, ask again soon


class Claim:
    """An exclusive, non-blocking lock on one cell, held until release()."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @classmethod
    def try_take(cls, run_dir: Path, cid: str) -> Claim | None:
        path = Path(run_dir) / CLAIMS_DIR / f"{cid}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # Who holds it, for a person looking at a stuck run (not used for locking).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class CellTask:
    cfg: Any  # clbench.config.RunConfig
    cell_id: str


class ClaimQueue:
    """Hands out the cells this process should run, each under its claim.

    `next()` returns a claimed CellTask, WAIT when the only cells left are held
    by other processes (they are retried every RETRY_BUSY_S seconds, and run
    here if their holder died without storing them), or None when done.
    """

    def __init__(self, run_dir: Path, tasks: Iterable[CellTask], *, resume: bool):
        self.run_dir, self.resume = Path(run_dir), resume
        self.pending: deque[CellTask] = deque(tasks)
        self.busy: deque[CellTask] = deque()
        # A result file that changes after this point was written by another process.
        self.stamps = {t.cell_id: _file_stamp(result_path(self.run_dir, t.cell_id)) for t in self.pending}
        self.claims: dict[str, Claim] = {}
        self.by_others: list[str] = []
        self._busy_retry_at = 0.0

    def next(self) -> CellTask | str | None:
        while self.pending:
            task = self.pending.popleft()
            if self._take(task):
                return task
        if not self.busy:
            return None
        if time.monotonic() < self._busy_retry_at:
            return WAIT
        for _ in range(len(self.busy)):
            task = self.busy.popleft()
            if self._take(task):
                return task
        self._busy_retry_at = time.monotonic() + RETRY_BUSY_S
        return WAIT if self.busy else self.next()

    def _take(self, task: CellTask) -> bool:
        claim = Claim.try_take(self.run_dir, task.cell_id)
        if claim is None:
            self.busy.append(task)
            return False
        path = result_path(self.run_dir, task.cell_id)
        if _file_stamp(path) != self.stamps[task.cell_id] or (self.resume and is_done(self.run_dir, task.cell_id)):
            claim.release()
            self.by_others.append(task.cell_id)
            return False
        _remove_stale_temp_files(path.parent)
        self.claims[task.cell_id] = claim
        return True

    def release(self, cid: str) -> None:
        claim = self.claims.pop(cid, None)
        if claim is not None:
            claim.release()

    def close(self) -> None:
        for cid in list(self.claims):
            self.release(cid)


def _remove_stale_temp_files(cell_dir: Path) -> None:
    """Temp files of an atomic write cut short by a kill; safe to drop under the claim."""
    if cell_dir.is_dir():
        for tmp in cell_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
