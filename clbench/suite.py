"""Run a whole suite through an engine, resumable and safe to share between processes.

A cell with an ok result.json is never recomputed on resume; a failed or
missing one is. Every result is written atomically (temp file, fsync, rename),
so a suite killed at any moment loses at most the cells that were running.
Cells are claimed one by one (`clbench.locking`), so two `clbench bench`
processes on the same run dir split the cells between them instead of
running any twice. Engines (`clbench.engines`): `local` runs cells in this
process or in `--jobs N` worker processes; `ray` runs them as Ray tasks.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from clbench.config import RunConfig
from clbench.engines import EngineOptions
from clbench.locking import CellTask, ClaimQueue
from clbench.store import atomic_write_json, cell_id, check_no_conflicts, is_done


@dataclass
class SuiteOutcome:
    run_dir: Path
    planned: int
    skipped: int  # already done (resume)
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell_id, error)
    by_others: list[str] = field(default_factory=list)  # stored meanwhile by another process


def cell_ids(cells: list[RunConfig]) -> list[str]:
    return [cell_id(c.scenario, c.label, c.seed, c.config_hash()) for c in cells]


def run_suite(
    cells: list[RunConfig], run_dir: Path, *, resume: bool = True, jobs: int = 1, data_root=None,
    download: bool | None = None, plugin_files: list[str] = (), progress: bool = True, suite_name: str = "",
    options: EngineOptions | None = None, on_row=None,
) -> SuiteOutcome:
    """Run `cells` into `run_dir`. `options` picks the engine; without it, the local one with `jobs`.

    `on_row(task, progress)` sees each cell's accuracy row as the cell runs (see
    `run_cell`) and may stop it by returning False; the local engine supports it,
    Ray does not call it (cells there run to completion)."""
    options = options or EngineOptions(jobs=jobs)
    options.validate()
    run_dir, ids = Path(run_dir), cell_ids(cells)
    check_no_conflicts(run_dir, ids)
    with ExitStack() as stack:
        if options.engine == "ray":
            from clbench.engines.ray_engine import ray_session

            stack.enter_context(ray_session(options))  # no Ray, no cluster: exit 2 before anything is written
        return _run_suite(cells, ids, run_dir, resume=resume, data_root=data_root, download=download,
                          plugin_files=plugin_files, progress=progress, suite_name=suite_name, options=options,
                          on_row=on_row)


def _run_suite(cells: list[RunConfig], ids: list[str], run_dir: Path, *, resume: bool, data_root,
               download: bool | None, plugin_files, progress: bool, suite_name: str,
               options: EngineOptions, on_row=None) -> SuiteOutcome:
    from tqdm import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "suite.json", {"name": suite_name, "cells": ids})
    todo = [CellTask(c, cid) for c, cid in zip(cells, ids, strict=True) if not (resume and is_done(run_dir, cid))]
    outcome = SuiteOutcome(run_dir, planned=len(cells), skipped=len(cells) - len(todo))
    queue = ClaimQueue(run_dir, todo, resume=resume)
    bar = tqdm(total=len(todo), desc=f"suite {suite_name}".strip(), unit="cell", disable=not progress)

    def show_progress() -> None:
        bar.n = len(outcome.ok) + len(outcome.failed) + len(queue.by_others)
        bar.set_postfix(ok=len(outcome.ok), failed=len(outcome.failed), others=len(queue.by_others))

    def report(task: CellTask, status: str, error: str | None) -> None:
        queue.release(task.cell_id)  # only now: its result is on disk
        (outcome.ok.append(task.cell_id) if status == "ok" else
         outcome.failed.append((task.cell_id, error or "unknown error")))
        show_progress()

    def on_start(task: CellTask) -> None:
        bar.set_description(task.cell_id[:50])
        show_progress()

    common = dict(data_root=data_root, download=download, options=options, progress=progress, on_start=on_start)
    try:
        if options.engine == "ray":
            from clbench.engines.ray_engine import run_on_ray

            run_on_ray(queue, report, run_dir, plugin_files=list(plugin_files), **common)
        elif options.jobs == 1 and options.cell_timeout is None:
            from clbench.engines.local import run_in_process

            run_in_process(queue, report, run_dir, on_row=on_row, **common)
        else:  # a timeout needs a worker process: only from outside can a cell be stopped
            from clbench.engines.local import run_in_pool

            run_in_pool(queue, report, run_dir, plugin_files=list(plugin_files), on_row=on_row, **common)
    finally:
        queue.close()
        bar.close()
    outcome.by_others = list(queue.by_others)
    return outcome


def outcome_lines(outcome: SuiteOutcome) -> list[str]:
    others = f", {len(outcome.by_others)} stored by another process" if outcome.by_others else ""
    lines = [
        f"{outcome.planned} cells: {outcome.skipped} already done, {len(outcome.ok)} ran ok, "
        f"{len(outcome.failed)} failed{others} -> {outcome.run_dir}"
    ]
    lines += [f"  FAILED {cid}: {err}" for cid, err in outcome.failed]
    return lines
