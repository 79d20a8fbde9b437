"""Forgetting reports from a results store (`RUN_DIR/cells/<cell_id>/result.json`).

Public API:

* `load_run(run_dir) -> LoadedRun`: valid cells, failed cells and skipped files with reasons.
* `summary_table(run_dir_or_results) -> DataFrame`: the rows of summary.csv, one per
  (scenario, label); `clbench.summary` is this function.
* `write_summary_csv(run_dir_or_results, path=None) -> Path`: `summary_table` written to
  RUN_DIR/summary.csv; `clbench bench` calls it after every suite.
* `build_report(run_dir, out_dir=None, formats=..., compare=()) -> ReportResult`:
  summary.md / .csv / .tex, long.csv, PNG figures, report.html, and with `compare`
  compare.md / compare.csv. Metric definitions: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clbench.errors import ClbenchError
from clbench.report.aggregate import Analysis, analyze
from clbench.report.load import (
    IN_MEMORY,
    FailedCell,
    LoadedRun,
    Skipped,
    load_results,
    load_run,
)
from clbench.report.tables import SUMMARY_COLUMNS, summary_frame, write_csv

__all__ = [
    "FORMATS", "FailedCell", "LoadedRun", "ReportResult", "Skipped",
    "build_report", "load_results", "load_run", "summary_table", "write_summary_csv",
]  # fmt: skip

FORMATS = ("md", "csv", "tex", "html", "png")


@dataclass
class ReportResult:
    out_dir: Path
    paths: list[Path] = field(default_factory=list)  # every file written
    skipped: list[Skipped] = field(default_factory=list)  # compare runs' paths are prefixed
    failed: list[FailedCell] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str = ""  # a few lines for the CLI to print
    summary: pd.DataFrame | None = None  # the wide summary of the main run


def write_summary_csv(run_dir_or_results: Any, path: str | Path | None = None) -> Path:
    """Write one row per (scenario, label) with mean and std over seeds.

    Accepts a run directory, a `LoadedRun`, or an iterable of result dicts (then
    `path` is required). Columns: SUMMARY_COLUMNS. A run with no valid cell gets a
    header-only file rather than an error, because the runner calls this after
    every suite, including one whose cells all failed.
    """
    run = _as_loaded_run(run_dir_or_results)
    if path is None:
        if run.run_dir == IN_MEMORY:
            raise ClbenchError("write_summary_csv: give `path` when passing result dicts")
        path = run.run_dir / "summary.csv"
    return write_csv(summary_table(run), Path(path))


def summary_table(run_dir_or_results: Any) -> pd.DataFrame:
    """The rows and columns (SUMMARY_COLUMNS) of summary.csv; `clbench.summary` is this.

    Accepts what `write_summary_csv` accepts. No valid cell gives no rows, not an error.
    """
    run = _as_loaded_run(run_dir_or_results)
    frame = summary_frame(analyze(run)) if run.cells else pd.DataFrame(columns=SUMMARY_COLUMNS)
    return frame[SUMMARY_COLUMNS].reset_index(drop=True)


def _as_loaded_run(source: Any) -> LoadedRun:
    if isinstance(source, LoadedRun):
        return source
    if isinstance(source, (str, Path)):
        return load_run(source)
    return load_results(source)


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """("md", "csv", ...) from a tuple or a "md,csv" string; unknown names raise."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    items = [f.strip().lower() for f in items if f.strip()]
    unknown = sorted(set(items) - set(FORMATS))
    if unknown or not items:
        names = ", ".join(unknown) or "(none given)"
        raise ClbenchError(f"unknown report format(s) {names}; valid: {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in items)


def build_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    formats: str | Iterable[str] = FORMATS,
    compare: Sequence[str | Path] = (),
) -> ReportResult:
    """Write the report of `run_dir` (and its comparison with `compare` runs) to `out_dir`.

    Raises ClbenchError naming the directory when a run has no valid result.
    """
    # Imported here: matplotlib is only needed when a report is built, not for
    # `write_summary_csv`, which the runner calls after every suite.
    from clbench.report.writers import write_outputs

    formats = parse_formats(formats)
    analyses = [_analyze_or_fail(d) for d in (run_dir, *compare)]
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    main = analyses[0]
    result = ReportResult(out_dir=out, failed=list(main.run.failed), notes=list(main.notes))
    result.skipped = list(main.run.skipped)
    for a in analyses[1:]:
        result.skipped += [Skipped(f"{a.run.run_dir}/{s.path}", s.reason) for s in a.run.skipped]
    result.paths = write_outputs(analyses, out, formats)
    result.summary = summary_frame(main)
    result.text = summary_text(main, result)
    return result


def _analyze_or_fail(run_dir: str | Path) -> Analysis:
    run = load_run(run_dir)
    if not run.cells:
        raise ClbenchError(run.why_empty())
    return analyze(run)


def summary_text(analysis: Analysis, result: ReportResult) -> str:
    """What the CLI prints: counts, the best row per scenario, problems, files written."""
    from clbench.report.display import acc_name, fmt_number, units_for

    run = analysis.run
    lines = [
        f"Report for {run.run_dir}: {len(run.cells)} valid cell(s), {len(run.failed)} failed, "
        f"{len(run.skipped)} skipped, {len(analysis.scenarios)} scenario(s)."
    ]
    for name, info in sorted(analysis.scenarios.items()):
        rows = analysis.summary[
            (analysis.summary["scenario"] == name) & ~analysis.summary["is_reference"]
        ]
        rows = rows[rows["acc_mean"].notna()]
        if rows.empty:
            continue
        u = units_for(info.metric_name)
        sign = 1 if info.higher_is_better else -1
        best = rows.loc[(sign * rows["acc_mean"]).idxmax()]
        value = fmt_number(best["acc_mean"] * u.scale, u.decimals)
        unit = u.level if u.level == "%" else f" {u.level}"
        line = (
            f"  {name}: best {acc_name(info)} {best['label']} {value}{unit} (n={best['n_seeds']})"
        )
        forgetting = rows[rows["forgetting_mean"].notna()]
        if not forgetting.empty:
            least = forgetting.loc[forgetting["forgetting_mean"].idxmin()]
            value = fmt_number(least["forgetting_mean"] * u.scale, u.decimals)
            line += f"; least forgetting {least['label']} {value} {u.delta}"
        lines.append(line)
    for item in result.failed[:5]:
        lines.append(f"  failed: {item}")
    for item in result.skipped[:5]:
        lines.append(f"  skipped: {item}")
    hidden = max(0, len(result.failed) - 5) + max(0, len(result.skipped) - 5)
    if hidden:
        lines.append(f"  ... and {hidden} more listed in the report")
    lines.append(f"Wrote {len(result.paths)} file(s) to {result.out_dir}")
    return "\n".join(lines)
