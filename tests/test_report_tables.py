"""Golden Markdown tables and LaTeX that is balanced (and compiles when a TeX engine exists).

Regenerate the golden files after an intended change with
`CLBENCH_UPDATE_GOLDEN=1 pytest tests/test_report_tables.py`, then review the diff.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from scipy import stats

from clbench.report import build_report
from clbench.report.latex import escape
from clbench.report.synthetic import result_with_matrix, write_result

GOLDEN = Path(__file__).parent / "golden"

# Hand-written matrices; seeds shift every entry by a fixed amount.
NAIVE = [[0.95, 0.10, 0.11], [0.60, 0.94, 0.09], [0.40, 0.55, 0.96]]
EWC = [[0.90, 0.12, 0.10], [0.82, 0.88, 0.10], [0.75, 0.80, 0.86]]
JOINT = [[0.97, 0.96, 0.95]] * 3
SI = [[0.91, 0.10, 0.10], [0.80, 0.90, 0.10], [0.70, 0.78, 0.89]]
LWF = [[0.93, 0.10, 0.10], [0.75, 0.90, 0.10], [0.60, 0.70, 0.88]]
SHIFT = {0: -0.01, 1: 0.0, 2: 0.02}
# lwf's seeds move differently from naive's, so its paired differences vary.
LWF_SHIFT = {0: 0.0, 1: 0.03, 2: 0.0}
WALL = {"naive": 10.0, "ewc": 14.0, "joint": 40.0, "si": 12.0, "replay": 15.0, "lwf": 13.0,
        "naive_rerun": 10.0}  # fmt: skip


def shifted(matrix, d):
    return [[round(v + d, 4) for v in row] for row in matrix]


def costs(label, seed):
    wall = WALL[label] + seed / 2
    return dict(wall_seconds=wall, train_seconds=0.8 * wall, eval_seconds=0.1 * wall,
                peak_rss_mb=1000.0 + 10 * seed, num_params=1000,
                train_samples_per_s=4000.0 / (0.8 * wall))  # fmt: skip


def golden_run(root: Path) -> Path:
    """split_mnist (class-IL): naive, ewc, joint over 3 seeds with the same per-seed shift (so
    their paired differences are constant), lwf over 3 seeds with its own shifts, naive_rerun
    equal to naive (identical), si with 1 seed, one failed and one broken cell;
    char_lm: a domain-IL, lower-is-better bpc scenario with 2 seeds."""
    run_dir = root / "golden_run"
    for seed, d in SHIFT.items():
        for label, matrix in (("naive", NAIVE), ("ewc", EWC), ("joint", JOINT)):
            m = shifted(matrix, d)
            cell = result_with_matrix(
                "split_mnist", label, seed, m, [0.1] * 3, **costs(label, seed)
            )
            write_result(run_dir, cell)
        rerun = result_with_matrix("split_mnist", "naive_rerun", seed, shifted(NAIVE, d),
                                   [0.1] * 3, strategy="naive", **costs("naive_rerun", seed))  # fmt: skip
        write_result(run_dir, rerun)
        lwf = shifted(LWF, LWF_SHIFT[seed])
        write_result(run_dir, result_with_matrix("split_mnist", "lwf", seed, lwf, [0.1] * 3,
                                                 **costs("lwf", seed)))  # fmt: skip
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
            lm = dict(metric_name="bpc", higher_is_better=False, scenario_type="domain_il",
                      **costs(label, seed))  # fmt: skip
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


def _t2_p(t: float) -> float:
    """Two-sided p of Student t with 2 dof, in closed form: 1 - |t| / sqrt(t^2 + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm step-down: sorted p_(i) times (m - i), running maximum, capped at 1."""
    order = sorted(range(len(p)), key=p.__getitem__)
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def _mde_in_sd_by_hand(n: int) -> float:
    """d with P(|T'| > t_crit) = 0.8 for T' ~ noncentral t(n - 1, d sqrt(n)), by bisection."""
    crit = stats.t.ppf(0.975, n - 1)

    def power(d):
        nc = d * math.sqrt(n)
        return stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)

    lo, hi = 0.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power(mid) < 0.8 else (lo, mid)
    return lo


def _row(text: str, name: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_golden_comparisons_are_the_hand_computed_ones(tmp_path):
    """Paired CI, Holm, MDE, identical / constant and the class-IL FWT blank, by hand."""
    whole = (build_report(golden_run(tmp_path), formats="md").out_dir / "summary.md").read_text()
    text = whole[whole.index("## split_mnist") :]
    header = _row(text, "Strategy")
    col = {name: header.index(name) for name in header}
    # lwf - naive ACC per seed: (0.7267 + LWF_SHIFT) - (0.6367 + SHIFT) = 0.10, 0.12, 0.07.
    diffs = [0.10, 0.12, 0.07]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)  # 0.025166
    se = sd / math.sqrt(3)
    half = 4.302653 * se  # t_{0.975, 2}
    lwf = _row(text, "lwf")
    assert lwf[col["Δ ACC vs naive (pp) ↑"]] == f"+{100 * mean:.2f} ± {100 * half:.2f}"
    assert lwf[col["Δ ACC vs naive (pp) ↑"]] == "+9.67 ± 6.25"
    # lwf - ewc: the same spread around a mean of -0.07.
    p_naive, p_ewc = _t2_p(mean / se), _t2_p(-0.07 / se)
    # The family: lwf vs naive on ACC, lwf vs its best baseline ewc on ACC, and naive_rerun
    # vs naive on ACC and forgetting (identical: p = 1). Every other shown comparison has a
    # constant difference or one seed, so no test.
    holm = _holm_by_hand([p_naive, p_ewc, 1.0, 1.0])
    assert f"{holm[0]:.3f}" == "0.087" and f"{holm[1]:.3f}" == "0.121"
    assert lwf[col["p(Δ ACC) raw (Holm)"]] == f"{p_naive:.3f} ({holm[0]:.3f})"
    best = "p(ACC) vs best baseline, raw (Holm)"
    assert lwf[col[best]] == f"ewc: {p_ewc:.3f} ({holm[1]:.3f})"
    assert "this table's family: every p-value this table shows" in text and "), 4 test(s)." in text
    # MDE at n = 3: d(3) SDs of the paired differences.
    d3 = _mde_in_sd_by_hand(3)
    assert lwf[col["MDE Δ ACC (pp)"]] == f"{100 * d3 * sd:.2f}"
    assert f"d(n) = {d3:.2f} SD at n = 3, {_mde_in_sd_by_hand(5):.2f} SD at n = 5" in text
    # lwf forgets 0.265 on every seed, naive 0.47: a constant difference, no t-test, no MDE.
    assert lwf[col["Δ Forgetting vs naive (pp) ↓"]] == "-20.50 ± 0.00"
    assert lwf[col["p(Δ Forgetting) raw (Holm)"]] == "constant diff"
    # naive_rerun is naive again: identical, never p = 0 or "<0.001".
    rerun = _row(text, "naive_rerun (naive)")
    assert rerun[col["p(Δ ACC) raw (Holm)"]] == "identical"
    assert rerun[col["p(Δ Forgetting) raw (Holm)"]] == "identical"
    assert rerun[col["Δ ACC vs naive (pp) ↑"]] == "+0.00 ± 0.00"
    assert _row(text, "ewc")[col[best]] == "si: n/a"  # one shared seed
    assert _row(text, "naive")[col["Δ ACC vs naive (pp) ↑"]] == "reference"
    # class-IL split_mnist: FWT is n/a on every row and never bold; domain-IL char_lm keeps it.
    fwt = col["FWT (pp) ↑"]
    assert {_row(text, name)[fwt] for name in ("naive", "ewc", "lwf", "si")} == {"n/a"}
    assert "FWT: n/a in class-IL" in text
    char_lm = whole[whole.index("## char_lm") : whole.index("## split_mnist")]
    assert _row(char_lm, "ewc")[_row(char_lm, "Strategy").index("FWT (bpc) ↑")] == "2.000"
    assert "FWT: n/a" not in char_lm
    # char_lm's ewc - naive is the same on both seeds: a constant difference, not p = 0.
    assert "constant diff" in char_lm and ", 0 test(s)." in char_lm
    assert "<0.001" not in whole  # every p = 0 in the old report came from zero variance


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
