"""The results store: one `cells/<cell_id>/result.json` per cell, written atomically.

A reader (or a crash) never sees a half-written result: the JSON goes to a
temporary file in the same directory, is fsynced, then renamed over the final
name, which POSIX makes atomic. See docs/results_schema.md for the fields.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from clbench.errors import RunDirConflictError

# 2: an optional `anytime` curve (train.eval_every); version-1 results are still read.
SCHEMA_VERSION = 2
RESULT_FILE = "result.json"


def cell_id(scenario: str, label: str, seed: int, config_hash: str) -> str:
    return f"{scenario}__{label}__seed{seed}__{config_hash}"


def split_cell_id(cid: str) -> tuple[str, str, int, str] | None:
    parts = cid.split("__")
    if len(parts) != 4 or not parts[2].startswith("seed") or not parts[2][4:].isdigit():
        return None
    return parts[0], parts[1], int(parts[2][4:]), parts[3]


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file, fsync, rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # fsync the directory so the rename itself survives a power cut.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=True))


def result_path(run_dir: Path, cid: str) -> Path:
    return Path(run_dir) / "cells" / cid / RESULT_FILE


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    path = result_path(run_dir, result["cell_id"])
    atomic_write_json(path, result)
    return path


def read_result(path: Path) -> dict[str, Any] | None:
    """The stored result, or None when absent or unreadable (treated as not done)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_done(run_dir: Path, cid: str) -> bool:
    result = read_result(result_path(run_dir, cid))
    return bool(result) and result.get("status") == "ok"


def existing_cell_ids(run_dir: Path) -> list[str]:
    cells = Path(run_dir) / "cells"
    return sorted(p.name for p in cells.iterdir() if p.is_dir()) if cells.is_dir() else []


def check_no_conflicts(run_dir: Path, planned: list[str]) -> None:
    """Refuse to mix results of different configs under the same (scenario, label, seed).

    A changed hyper-parameter gives a new config hash; writing it next to the
    old results would make reports average two different experiments.
    """
    existing = {}
    for cid in existing_cell_ids(run_dir):
        parts = split_cell_id(cid)
        if parts:
            existing.setdefault(parts[:3], set()).add(parts[3])
    for cid in planned:
        scenario, label, seed, config_hash = split_cell_id(cid)
        other = existing.get((scenario, label, seed), set()) - {config_hash}
        if other:
            raise RunDirConflictError(
                f"{run_dir} already holds results for {scenario}/{label}/seed {seed} with config hash "
                f"{', '.join(sorted(other))}, but this run resolves to {config_hash}: the config changed. "
                f"Use a new --out directory (nothing was deleted or overwritten)."
            )
