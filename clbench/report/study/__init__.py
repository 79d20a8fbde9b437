"""The study's report (docs/study.md): does HOPE or CMS forget less than EWC or replay?

    python -m clbench.report.study reports/study        # `make study-report`

reads the committed cells of every part (reports/study/cells, copied there by
clbench.report.study.collect as each part ends) and writes, beside the usual report
(summary, long.csv, plots, stability gap):

* `answer.md` / `answer.csv`: the four primary contrasts (suites/study/contrasts.toml) per
  stream: paired differences in ACC, forgetting and plasticity with 95% CIs, Holm p over the
  one primary family, and the reading of forgetting at equal plasticity; then the same in
  words, generated, so the README and FINDINGS quote it instead of retyping it;
* `exploratory.md` / `.csv`: the other contrasts (own Holm family, labelled exploratory);
* `frontier.md` / `.csv` and `frontier_<stream>.png`: the stability-plasticity sweeps and
  each contrast's row read against its control's curve;
* `cost.md` / `.csv`: speed, wall time and tuning cost of both sides of every contrast;
* `gap_primary/`: the stability gap (anytime curves) of the primary contrasts' rows alone;
* `status.md`: which rows of the design have cells, and which parts are still to run.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from clbench.errors import ClbenchError, ConfigError
from clbench.report.display import fmt_number, fmt_p, fmt_signed
from clbench.report.stability import write_stability_gap
from clbench.report.study.contrasts import Spec, contrast_frame, load_spec, reading, significant
from clbench.report.study.cost import cost_frame, cost_markdown
from clbench.report.study.frontier import frontier_frame, plot_scenario

STREAMS = {"pmnist": "P-MNIST", "split_mnist": "Split MNIST", "split_cifar100_features": "Split CIFAR-100 (features)",
           "clinc150": "CLINC150 (MiniLM)"}
DEFAULT_SPEC = Path("suites/study/contrasts.toml")
DEFAULT_PARTS = Path("suites/study")


def _pm(mean: float, ci: float, scale: float = 100, decimals: int = 1) -> str:
    text = fmt_signed(scale * mean, decimals)
    return text + ("" if not math.isfinite(ci) else f" ± {fmt_number(scale * ci, decimals)}")


def _acc_words(r) -> str:
    if significant(r.acc_p_holm):
        return f"ACC {'higher' if r.acc_diff > 0 else 'lower'} by {fmt_number(100 * abs(r.acc_diff), 1)} pp"
    return "no ACC difference detected"


def failures(failed, scenario: str, labels) -> str:
    """Which cells of `labels` on `scenario` failed, and why, in a few words ("" if none):
    a contrast read on fewer seeds than the design says must say so where it is read."""
    by_label: dict[str, list] = {}
    for f in failed:
        if f.scenario == scenario and f.label in labels:
            by_label.setdefault(f.label, []).append(f)
    said = []
    for label in labels:
        mine = sorted(by_label.get(label, []), key=lambda f: (str(f.seed).isdigit(), str(f.seed).zfill(9)))
        if mine:
            kinds = sorted({f.error.split(":", 1)[0].strip() for f in mine})
            said.append(f"{label} failed in seed{'s' if len(mine) > 1 else ''} "
                        f"{', '.join(str(f.seed) for f in mine)} ({', '.join(kinds)})")
    return "; ".join(said)


def part_suites(parts_dir: Path) -> list[Path]:
    """The study's part suites in `parts_dir`: every TOML file but contrasts.toml and tuned files."""
    return [p for p in sorted(Path(parts_dir).glob("*.toml"))
            if p.name != "contrasts.toml" and not p.name.endswith(".tuned.toml")]


def expected_rows(parts_dir: Path) -> dict[tuple[str, str], str]:
    """(scenario, label) -> the part (suite file stem) that runs it, over every part of the study."""
    import clbench.registry  # noqa: F401  (the registry loads the built-in scenarios and strategies)
    from clbench.config import load_suite
    from clbench.resolve import suite_rows

    rows: dict[tuple[str, str], str] = {}
    for path in part_suites(parts_dir):
        for r in suite_rows(load_suite(path)):
            other = rows.setdefault((r.scenario, r.label), path.stem)
            if other != path.stem:  # the report pairs cells by (stream, label, seed): two rows would mix
                raise ConfigError(f"row {r.label!r} on {r.scenario} is in parts {other!r} and {path.stem!r}; "
                                  f"accepted: each label in one part per stream")
    return rows


def answer_frame(contrasts: pd.DataFrame, frontier: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    frame = contrasts.copy()
    readings, gaps = [], []
    for r in frame.itertuples():
        match = frontier[(frontier.contrast == r.contrast) & (frontier.scenario == r.scenario)] if len(frontier) else frontier
        f = match.iloc[0].to_dict() if len(match) else None
        readings.append(reading(frame.loc[r.Index], spec.tolerance, f))
        gaps.append(f)
    frame["reading"] = readings
    frame["frontier_gap"] = [g["gap"] if g else math.nan for g in gaps]
    frame["frontier_ci95"] = [g["ci95"] if g else math.nan for g in gaps]
    frame["frontier_p_holm"] = [g["p_holm"] if g else math.nan for g in gaps]
    return frame


def _cell(r) -> str:
    parts = [f"ACC {_pm(r.acc_diff, r.acc_ci95)}, p {fmt_p(r.acc_p_holm) if math.isfinite(r.acc_p_holm) else r.acc_status}",
             f"forgetting {_pm(r.forgetting_diff, r.forgetting_ci95)}, p "
             f"{fmt_p(r.forgetting_p_holm) if math.isfinite(r.forgetting_p_holm) else r.forgetting_status}",
             f"plasticity {_pm(r.plasticity_diff, math.nan)}"]
    if math.isfinite(r.frontier_gap):
        parts.append(f"vs sweep {_pm(r.frontier_gap, r.frontier_ci95)}, p {fmt_p(r.frontier_p_holm)}")
    return "<br>".join(parts) + f"<br>*{r.reading}*"


def answer_markdown(frame: pd.DataFrame, spec: Spec, kind: str, expected: dict[tuple[str, str], str],
                    failed=()) -> str:
    contrasts = [c for c in spec.contrasts if c.kind == kind]
    scenarios = [s for s in STREAMS if any(k[0] == s for k in expected)] or list(dict.fromkeys(frame.scenario))
    lines = ["| contrast (row - control, n seeds) | " + " | ".join(STREAMS.get(s, s) for s in scenarios) + " |",
             "| --- |" + " --- |" * len(scenarios)]
    for c in contrasts:
        cells = []
        for s in scenarios:
            match = frame[(frame.contrast == c.name) & (frame.scenario == s)] if len(frame) else frame
            failed_here = failures(failed, s, (c.row, c.control))
            if len(match):
                r = next(match.itertuples())
                cells.append(f"n={r.acc_n}<br>" + _cell(r) + (f"<br>{failed_here}" if failed_here else ""))
            elif failed_here:  # a side with no ok cell at all: the contrast cannot be read
                cells.append(f"not measured: {failed_here}")
            elif (s, c.row) in expected and (s, c.control) in expected:
                missing = sorted({expected[(s, x)] for x in (c.row, c.control)})
                cells.append(f"not yet run (part {', '.join(missing)})")
            else:
                cells.append("not in the design")
        lines.append(f"| {c.name} ({c.row} - {c.control}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _stream_rank(scenario: str) -> int:
    """The position of a stream in STREAMS (the table's column order); others last."""
    order = list(STREAMS)
    return order.index(scenario) if scenario in order else len(order)


def words_markdown(frame: pd.DataFrame, spec: Spec, failed=()) -> str:
    """The answer in plain words, one bullet per primary contrast, generated from the table."""
    lines = []
    for c in (c for c in spec.contrasts if c.kind == "primary"):
        rows = frame[frame.contrast == c.name] if len(frame) else frame
        if not len(rows):
            lines.append(f"- **{c.name}**: not measured yet.")
            continue
        rows = rows.sort_values("scenario", key=lambda col: col.map(_stream_rank))
        said = []
        for r in rows.itertuples():
            failed_here = failures(failed, r.scenario, (c.row, c.control))
            said.append(f"{STREAMS.get(r.scenario, r.scenario)}: {_acc_words(r)}; {r.reading}"
                        + (f" ({r.acc_n} seeds paired: {failed_here})" if failed_here else ""))
        lines.append(f"- **{c.name}** ({c.row} - {c.control}): " + "; ".join(said) + ".")
    return "\n".join(lines) + "\n"


def status_markdown(cells: pd.DataFrame, failed: list, expected: dict[tuple[str, str], str]) -> str:
    """Per part: rows with cells, rows whose every cell failed, rows not run, and the
    cell-seconds its cells took (the sum of their wall times: about twice the part's wall time
    at `--jobs 2`)."""
    have = set(zip(cells.scenario, cells.label, strict=True)) if len(cells) else set()
    failed_rows = {(f.scenario, f.label) for f in failed}
    lines = [f"{len(cells)} cells ok from {len(have)} rows; {len(failed)} failed (reasons in summary.md).", "",
             "| part | rows with cells | rows failed in every seed | rows not run | cells ok | cells failed | cell-seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    to_run = []
    for part in sorted(set(expected.values())):
        rows = {k for k, v in expected.items() if v == part}
        done, only_failed = rows & have, (rows & failed_rows) - have
        mine = cells[[k in rows for k in zip(cells.scenario, cells.label, strict=True)]] if len(cells) else cells
        n_failed = sum((f.scenario, f.label) in rows for f in failed)
        seconds = f"{mine.wall_seconds.sum():.0f}" if len(mine) else "-"
        not_run = len(rows - done - only_failed)
        lines.append(f"| `{part}` | {len(done)} | {len(only_failed)} | {not_run} | {len(mine)} | {n_failed} | {seconds} |")
        if not_run:
            to_run.append(part)
    lines.append("")
    lines.append(f"Parts with rows still to run: {', '.join(to_run)} (`make study PART=<part>` tunes a part that has no "
                 f"tuned file, then runs only the cells not yet run)."
                 if to_run else "Every row of the design has cells.")
    return "\n".join(lines) + "\n"


def build(report_dir: Path, spec_path: Path = DEFAULT_SPEC, parts_dir: Path = DEFAULT_PARTS) -> list[Path]:
    from clbench.report import build_report, load_run

    spec = load_spec(spec_path)
    # The usual report of every committed cell, without report.html: it embeds every figure
    # (megabytes), and this report is rebuilt and committed after every part.
    build_report(report_dir, report_dir, formats=("md", "csv", "tex", "png"))
    run = load_run(report_dir)
    long = pd.read_csv(report_dir / "long.csv")
    summary = pd.read_csv(report_dir / "summary.csv")
    expected = expected_rows(parts_dir)
    contrasts = contrast_frame(long, spec)
    if contrasts.empty:
        raise ClbenchError(f"{report_dir}: no contrast of {spec_path} has both rows on any stream yet")
    frontier = frontier_frame(long, run, contrasts)
    answer = answer_frame(contrasts, frontier, spec)
    written = []

    def write(name: str, text: str) -> None:
        (report_dir / name).write_text(text)
        written.append(report_dir / name)

    caption = (f"Paired by seed, row - control, in percentage points: mean ± 95% CI (Student t). p: Holm-adjusted "
               "over the {family} (ACC and forgetting of every stream). Forgetting: lower is better. "
               f"Equal plasticity: |plasticity difference| < {100 * spec.tolerance:.0f} pp; otherwise the row is read "
               "against the control's stability-plasticity sweep (`vs sweep`: the row's forgetting minus the control's "
               "curve at the row's plasticity, Holm over its own family; frontier.md), or not read.\n")
    generated = f"Generated by `python -m clbench.report.study {report_dir}` from the committed cells.\n\n"
    write("answer.md", "# Does HOPE or CMS forget less than EWC or replay?\n\n" + generated
          + "## Answer table\n\n" + answer_markdown(answer, spec, "primary", expected, run.failed) + "\n"
          + caption.format(family="one family of every primary test") + "\n## Answer in words\n\n"
          + words_markdown(answer, spec, run.failed))
    answer.to_csv(report_dir / "answer.csv", index=False)
    write("exploratory.md", "# Exploratory contrasts\n\n" + generated + "Not planned as the study's question: "
          "read as leads, not findings.\n\n" + answer_markdown(answer, spec, "exploratory", expected, run.failed) + "\n"
          + caption.format(family="exploratory family"))
    frontier.to_csv(report_dir / "frontier.csv", index=False)
    write("frontier.md", "# Stability-plasticity sweeps\n\n" + generated + _frontier_markdown(frontier))
    highlight = sorted({x for c in spec.contrasts if c.kind == "primary" for x in (c.row, c.control)})
    controls = {c.control for c in spec.contrasts}
    for scenario in dict.fromkeys(long.scenario):
        png = plot_scenario(long, run, scenario, highlight, controls)
        if png:
            (report_dir / f"frontier_{scenario}.png").write_bytes(png)
            written.append(report_dir / f"frontier_{scenario}.png")
    # The stability gap of the primary arms alone: the full report's section has every sweep row too.
    primary = {x for c in spec.contrasts if c.kind == "primary" for x in (c.row, c.control)}
    gap_dir = report_dir / "gap_primary"
    gap_dir.mkdir(exist_ok=True)
    written += write_stability_gap(replace(run, cells=[c for c in run.cells if c["label"] in primary]), gap_dir,
                                   ("md", "csv", "png"), "the study's primary arms")
    costs = cost_frame(summary, contrasts)
    costs.to_csv(report_dir / "cost.csv", index=False)
    write("cost.md", "# Cost\n\n" + generated + "Per cell, mean over seeds, on the machine that ran the part "
          "(2 CPU cores, one torch thread per cell). Tuning: CPU-seconds of `make study-tune` for that row.\n\n"
          + cost_markdown(costs))
    cells = pd.DataFrame([{"scenario": c["scenario"], "label": c["label"], "seed": c["seed"],
                           "wall_seconds": c["wall_seconds"]} for c in run.cells])
    write("status.md", "# Which parts have run\n\n" + generated + "## Parts\n\n" + status_markdown(cells, run.failed, expected))
    return written


def _frontier_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "No contrast's control has a sweep in these cells.\n"
    lines = ["| kind | contrast | stream | control's curve | seeds read | row - curve at row's plasticity (pp) | p | p Holm |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in frame.itertuples():
        lines.append(f"| {r.kind} | {r.contrast} | {STREAMS.get(r.scenario, r.scenario)} | {r.curve} | {r.n} "
                     f"(outside: {r.seeds_outside}) | {_pm(r.gap, r.ci95)} | {fmt_p(r.p)} | {fmt_p(r.p_holm)} |")
    return "\n".join(lines) + ("\n\nForgetting of the row minus the control's curve at the row's plasticity, per seed. "
                               "The curve is the control's frontier: its sweep points that no other point of the seed "
                               "beats on both axes, joined linearly (docs/study.md); a seed outside the frontier's "
                               "plasticity range gives no reading. Negative: the row lies above the curve (forgets "
                               "less at the same plasticity).\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the study report (answer table, sweeps, cost) from committed cells.")
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--contrasts", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--parts", type=Path, default=DEFAULT_PARTS, help="folder of the study's part suites")
    args = ap.parse_args(argv)
    try:
        for path in build(args.report_dir, args.contrasts, args.parts):
            print(path)
    except ClbenchError as exc:
        print(f"clbench.report.study: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
