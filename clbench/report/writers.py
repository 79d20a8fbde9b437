"""Write every requested output file of a report; returns the paths written.

Kept apart from `clbench.report` so that importing the package (for
`write_summary_csv`) does not import matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from clbench.report.aggregate import Analysis
from clbench.report.compare import (
    compare_frame,
    compare_tables,
    render_compare_markdown,
    unique_run_names,
)
from clbench.report.display import DisplayTable, summary_table
from clbench.report.html import render_html
from clbench.report.latex import render_latex
from clbench.report.plots import render_plots
from clbench.report.stability import write_stability_gap
from clbench.report.tables import (
    counts_line,
    long_frame,
    render_markdown,
    summary_frame,
    write_csv,
)


def scenario_tables(analysis: Analysis) -> list[DisplayTable]:
    return [
        summary_table(rows, analysis.scenarios[name])
        for name, rows in analysis.summary.groupby("scenario", sort=True)
    ]


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_outputs(analyses: list[Analysis], out: Path, formats: tuple[str, ...]) -> list[Path]:
    main = analyses[0]
    tables = scenario_tables(main)
    problems = [str(f) for f in main.run.failed] + [str(s) for s in main.run.skipped]
    paths = []
    if "md" in formats:
        paths.append(_write_text(out / "summary.md", render_markdown(main, tables)))
    if "csv" in formats:
        paths.append(write_csv(summary_frame(main), out / "summary.csv"))
        paths.append(write_csv(long_frame(main), out / "long.csv"))
    if "tex" in formats:
        paths.append(
            _write_text(out / "summary.tex", render_latex(main.run_name, tables, problems))
        )
    plots = render_plots(main) if {"png", "html"} & set(formats) else []
    if "png" in formats:
        for plot in plots:
            (out / plot.filename).write_bytes(plot.png)
            paths.append(out / plot.filename)
    paths += write_stability_gap(main.run, out, formats, main.run_name)
    comparison = []
    if len(analyses) > 1:
        frame = compare_frame(analyses)
        comparison = compare_tables(frame, unique_run_names(analyses))
        paths.append(write_csv(frame, out / "compare.csv"))
        paths.append(_write_text(out / "compare.md", render_compare_markdown(analyses, comparison)))
    if "html" in formats:
        sections = [(t, [p for p in plots if f"scenario-{p.scenario}" == t.anchor]) for t in tables]
        lists = [
            ("Failed cells (not used in metrics)", [str(f) for f in main.run.failed]),
            ("Skipped", [str(s) for s in main.run.skipped]),
            ("Notes", main.notes),
        ]
        page = render_html(
            f"clbench report: {main.run_name}", counts_line(main), sections, lists, comparison
        )
        paths.append(_write_text(out / "report.html", page))
    return paths
