"""Golden Markdown tables and LaTeX that is balanced (and compiles when a TeX engine exists).

Regenerate the golden files after an intended change with
`CLBENCH_UPDATE_GOLDEN=1 pytest tests/test_report_tables.py`, then review the diff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clbench.report import build_report
from clbench.report.latex import escape
from clbench.report.synthetic import result_with_matrix, write_result

GOLDEN = Path(__file__).parent / "golden"

# Hand-written matrices; seeds shift every entry by a fixed amount.
NAIVE = [[0.95, 0.10, 0.11], [0.60, 0.94, 0.09], [0.40, 0.55, 0.96]]
EWC = [[0.90, 0.12, 0.10], [0.82, 0.88, 0.10], [0.75, 0.80, 0.86]]
JOINT = [[0.97, 0.96, 0.95]] * 3
SI = [[0.91, 0.10, 0.10], [0.80, 0.90, 0.10], [0.70, 0.78, 0.89]]
SHIFT = {0: -0.01, 1: 0.0, 2: 0.02}
WALL = {"naive": 10.0, "ewc": 14.0, "joint": 40.0, "si": 12.0, "replay": 15.0}


def shifted(matrix, d):
    return [[round(v + d, 4) for v in row] for row in matrix]


def costs(label, seed):
    wall = WALL[label] + seed / 2
    return dict(wall_seconds=wall, train_seconds=0.8 * wall, eval_seconds=0.1 * wall,
                peak_rss_mb=1000.0 + 10 * seed, num_params=1000,
                train_samples_per_s=4000.0 / (0.8 * wall))  # fmt: skip


def golden_run(root: Path) -> Path:
    """split_mnist: naive, ewc, joint over 3 seeds, si with 1 seed, one failed and one broken cell;
    char_lm: a lower-is-better bpc scenario with 2 seeds."""
    run_dir = root / "golden_run"
    for seed, d in SHIFT.items():
        for label, matrix in (("naive", NAIVE), ("ewc", EWC), ("joint", JOINT)):
            m = shifted(matrix, d)
            cell = result_with_matrix(
                "split_mnist", label, seed, m, [0.1] * 3, **costs(label, seed)
            )
            write_result(run_dir, cell)
    write_result(run_dir, result_with_matrix("split_mnist", "si", 0, SI, **costs("si", 0)))
    failed = result_with_matrix("split_mnist", "replay", 0, NAIVE[:1], **costs("replay", 0))
    failed.update(
        status="failed", error="NonFiniteLossError: loss is nan at experience 1, iteration 3"
    )
    write_result(run_dir, failed)
    broken = run_dir / "cells" / "split_mnist__ewc__seed9__deadbeef00" / "result.json"
    broken.parent.mkdir()
    broken.write_text('{"schema_version": 1, "cell_id": "split_mnist__ewc__seed9')  # half-written
    for seed in (0, 1):
        for label, first in (("naive", 2.10), ("ewc", 1.80)):
            d = seed / 50
            matrix = [[1.50 + d, 6.0], [first + d, 1.60 + d]]
            lm = dict(metric_name="bpc", higher_is_better=False, **costs(label, seed))
            write_result(
                run_dir, result_with_matrix("char_lm", label, seed, matrix, [8.0, 8.0], **lm)
            )
    return run_dir


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CLBENCH_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing {path}; create it with CLBENCH_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} changed; if intended, rerun with CLBENCH_UPDATE_GOLDEN=1"
    )


def test_markdown_summary_matches_golden(tmp_path):
    result = build_report(golden_run(tmp_path), formats="md")
    text = (result.out_dir / "summary.md").read_text(encoding="utf-8")
    check_golden("summary_golden_run.md", text)


def test_golden_numbers_are_the_hand_computed_ones(tmp_path):
    """Cells of the golden table recomputed by hand, so the golden file is not self-justifying."""
    text = (build_report(golden_run(tmp_path), formats="md").out_dir / "summary.md").read_text()
    # naive ACC per seed = mean of the shifted last row: (0.40 + 0.55 + 0.96)/3 + d = 0.6367 + d.
    # Mean over d in (-0.01, 0, 0.02) = 0.6400; sd = 0.01528;
    # CI = 4.3027 * 0.01528 / sqrt(3) = 0.0379.
    assert "| naive | 3 | 64.00 ± 3.79 |" in text
    # naive forgetting: ((0.95 - 0.40) + (0.94 - 0.55)) / 2 = 0.47 for every seed: CI 0.
    assert "| 47.00 ± 0.00 |" in text
    # ewc: ACC 0.8033 + d; forgetting ((0.90 - 0.75) + (0.88 - 0.80)) / 2 = 0.115 (bold: least).
    assert "| ewc | 3 | **80.67 ± 3.79** | **11.50 ± 0.00** |" in text
    # bpc: ewc's loss on exp 0 rose from 1.50 to 1.80 (0.300), naive's to 2.10 (0.600).
    # ewc's final row is (1.80 + 1.60) / 2 = 1.70 (+0.02 for seed 1): mean 1.71;
    # CI = 12.706 * 0.01 = 0.127.
    assert "| ewc | 2 | **1.710 ± 0.127** | **0.300 ± 0.000** |" in text


# --------------------------------------------------------------------------- LaTeX
def check_balanced_booktabs(tex: str) -> int:
    """Assert the document is structurally sound; return the number of tabulars."""
    # Comment lines, and the deliberate "{%" that ends a line without a space, are not text.
    lines = [
        line.removesuffix("{%") + "{" if line.endswith("{%") else line for line in tex.splitlines()
    ]
    body = "\n".join(line for line in lines if not line.lstrip().startswith("%"))
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, (
                f"\\end{{{env}}} does not close the open environment"
            )
    assert not stack, f"unclosed environments: {stack}"
    unescaped = re.sub(r"\\[{}]", "", body)
    assert unescaped.count("{") == unescaped.count("}"), "unbalanced braces"
    assert not re.search(r"(?<!\\)[_%#]", body), "unescaped _, % or #"
    assert body.count("$") % 2 == 0 and body.count("\\$") == 0
    tables = re.findall(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", body, re.S)
    for spec, inner in tables:
        assert (
            inner.count("\\toprule") == inner.count("\\midrule") == inner.count("\\bottomrule") == 1
        )
        rows = [r for r in inner.split("\\\\") if "&" in r]
        assert rows, "a table without rows"
        for row in rows:
            assert row.count("&") == len(spec) - 1, (
                f"row has {row.count('&') + 1} cells, spec {spec}"
            )
    return len(tables)


def test_latex_is_a_balanced_booktabs_document(tmp_path):
    result = build_report(golden_run(tmp_path), formats="tex")
    tex = (result.out_dir / "summary.tex").read_text()
    assert tex.startswith("\\documentclass{article}") and "\\usepackage{booktabs}" in tex
    assert check_balanced_booktabs(tex) == 2
    assert "split\\_mnist" in tex and "char\\_lm" in tex
    assert "\\textbf{80.67 $\\pm$ 3.79}" in tex
    assert "NonFiniteLossError" in tex  # failed cells are listed in the document too


def test_escape_handles_every_special_character():
    assert escape("a_b & 50% #1 $x {y} ~^\\ <p>") == (
        "a\\_b \\& 50\\% \\#1 \\$x \\{y\\} \\textasciitilde{}\\textasciicircum{}\\textbackslash{}"
        " \\textless{}p\\textgreater{}"
    )
    assert escape("naïve") == "na?ve"


@pytest.mark.skipif(
    shutil.which("pdflatex") is None,
    reason="no pdflatex: compile check skipped (balance check still runs)",
)
def test_latex_compiles(tmp_path):
    result = build_report(golden_run(tmp_path), formats="tex")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "summary.tex"],
        cwd=result.out_dir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (result.out_dir / "summary.pdf").stat().st_size > 0
