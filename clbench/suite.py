"""Run a whole suite: every cell in order (or in N worker processes), resumable.

A cell with an ok result.json is never recomputed on resume; a failed or
missing one is. Each worker writes its own cell's result atomically, so a
suite killed at any moment loses at most the cells that were running.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clbench.config import RunConfig
from clbench.store import atomic_write_json, cell_id, check_no_conflicts, is_done, write_result


@dataclass
class SuiteOutcome:
    run_dir: Path
    planned: int
    skipped: int  # already done (resume)
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell_id, error)


def cell_ids(cells: list[RunConfig]) -> list[str]:
    return [cell_id(c.scenario, c.label, c.seed, c.config_hash()) for c in cells]


def _worker_init(plugin_files: list[str], threads: int) -> None:
    import torch

    from clbench.registry import load_plugin_file

    torch.set_num_threads(threads)
    for path in plugin_files:
        load_plugin_file(path)


def _run_in_worker(cfg_dict: dict[str, Any], run_dir: str, data_root, download) -> tuple[str, str, str | None]:
    from clbench.runner import run_cell

    result = run_cell(RunConfig.from_dict(cfg_dict), Path(run_dir), data_root=data_root, download=download, progress=False)
    return result["cell_id"], result["status"], result["error"]


def _record_crash(run_dir: Path, cfg: RunConfig, cid: str, error: str) -> None:
    """A worker that died without writing its result still leaves a failed record."""
    from clbench.runner import _now

    write_result(run_dir, {
        "schema_version": 1, "cell_id": cid, "scenario": cfg.scenario, "strategy": cfg.strategy, "label": cfg.label,
        "seed": cfg.seed, "config_hash": cfg.config_hash(), "config": cfg.to_dict(), "status": "failed",
        "error": error, "traceback": None, "matrix": [], "initial": [], "finished_at": _now(),
    })


def run_suite(
    cells: list[RunConfig], run_dir: Path, *, resume: bool = True, jobs: int = 1, data_root=None,
    download: bool | None = None, plugin_files: list[str] = (), progress: bool = True, suite_name: str = "",
) -> SuiteOutcome:
    from tqdm import tqdm

    run_dir = Path(run_dir)
    ids = cell_ids(cells)
    check_no_conflicts(run_dir, ids)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "suite.json", {"name": suite_name, "cells": ids})
    todo = [(c, cid) for c, cid in zip(cells, ids, strict=True) if not (resume and is_done(run_dir, cid))]
    outcome = SuiteOutcome(run_dir, planned=len(cells), skipped=len(cells) - len(todo))
    bar = tqdm(total=len(todo), desc=f"suite {suite_name}".strip(), unit="cell", disable=not progress)

    def record(cid: str, status: str, error: str | None) -> None:
        (outcome.ok.append(cid) if status == "ok" else outcome.failed.append((cid, error or "unknown error")))
        bar.set_postfix(ok=len(outcome.ok), failed=len(outcome.failed))
        bar.update(1)

    if jobs <= 1:
        from clbench.runner import run_cell

        for cfg, cid in todo:
            bar.set_description(cid[:50])
            result = run_cell(cfg, run_dir, data_root=data_root, download=download, progress=progress)
            record(cid, result["status"], result["error"])
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        # spawn, not fork: torch and Avalanche hold thread pools that fork does not copy safely.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                                 initargs=(list(plugin_files), threads)) as pool:
            futures = {
                pool.submit(_run_in_worker, cfg.to_dict(), str(run_dir), data_root, download): (cfg, cid)
                for cfg, cid in todo
            }
            for future in as_completed(futures):
                cfg, cid = futures[future]
                try:
                    record(*future.result())
                except Exception as exc:  # the worker process itself died
                    error = f"worker crashed: {type(exc).__name__}: {exc}"
                    _record_crash(run_dir, cfg, cid, error)
                    record(cid, "failed", error)
    bar.close()
    return outcome


def outcome_lines(outcome: SuiteOutcome) -> list[str]:
    lines = [
        f"{outcome.planned} cells: {outcome.skipped} already done, {len(outcome.ok)} ran ok, "
        f"{len(outcome.failed)} failed -> {outcome.run_dir}"
    ]
    lines += [f"  FAILED {cid}: {err}" for cid, err in outcome.failed]
    return lines

