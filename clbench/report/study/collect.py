"""Copy a finished study part's cells into the committed study report (`make study PART=...`).

Each part of the study (suites/study/<part>.toml) runs into its own run directory
(runs/study/<part>); when it ends, its finished cells (ok, or failed with a reason) are
copied to `reports/study/cells/<cell_id>/result.json`, which is a run directory itself, so
`clbench report reports/study` reads every part at once. A cell rerun under a changed
configuration replaces the copy of the same (scenario, label, seed) with the old hash, so
the report never sees two configurations of one row. Unfinished cells are not copied: an
interrupted part loses nothing that is already in the report, and adds nothing half-done.

    python -m clbench.report.study.collect runs/study/mnist reports/study
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from clbench.report.load import RESULT_FILE, validate_result


def _row_seed(cell_id: str) -> str:
    """`scenario__label__seedN` of `scenario__label__seedN__hash`."""
    return cell_id.rsplit("__", 1)[0]


def collect(run_dir: Path, report_dir: Path) -> tuple[int, int, int]:
    """(copied, replaced, left out): left out are unfinished or unreadable cells."""
    cells = Path(run_dir) / "cells"
    if not cells.is_dir():
        raise FileNotFoundError(f"{cells} does not exist: run the part first (make study PART=...)")
    dest = Path(report_dir) / "cells"
    dest.mkdir(parents=True, exist_ok=True)
    existing: dict[str, list[Path]] = {}
    for d in dest.iterdir():
        existing.setdefault(_row_seed(d.name), []).append(d)
    copied = replaced = left_out = 0
    for cell in sorted(p for p in cells.iterdir() if p.is_dir()):
        source = cell / RESULT_FILE
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError):
            left_out += 1
            continue
        if validate_result(data):
            left_out += 1
            continue
        for stale in existing.get(_row_seed(cell.name), []):
            if stale.name != cell.name:
                shutil.rmtree(stale)
                replaced += 1
        (dest / cell.name).mkdir(exist_ok=True)
        shutil.copyfile(source, dest / cell.name / RESULT_FILE)
        copied += 1
    return copied, replaced, left_out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m clbench.report.study.collect RUN_DIR REPORT_DIR", file=sys.stderr)
        return 2
    try:
        copied, replaced, left_out = collect(Path(argv[0]), Path(argv[1]))
    except FileNotFoundError as exc:
        print(f"clbench.report.study.collect: {exc}", file=sys.stderr)
        return 2
    print(f"{argv[0]} -> {argv[1]}/cells: {copied} cell(s) copied ({replaced} older configuration(s) replaced), "
          f"{left_out} unfinished left out; commit {argv[1]}/cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
