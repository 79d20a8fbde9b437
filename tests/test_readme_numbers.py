"""README tables are generated from committed reports (clbench/report/readme.py), and stay so."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from clbench.report.readme import BLOCK, headline_table, main, render_blocks

ROOT = Path(__file__).resolve().parent.parent


def test_readme_tables_equal_what_the_committed_reports_give():
    text = (ROOT / "README.md").read_text()
    assert BLOCK.search(text), "README has no generated table"
    assert render_blocks(text, ROOT) == text, "README differs from the committed report: run `make readme`"


def test_findings_tables_equal_their_reports():
    """A FINDINGS.md may carry generated blocks too (paths relative to its folder)."""
    findings = [p for p in sorted((ROOT / "reports").glob("*/FINDINGS.md")) if BLOCK.search(p.read_text())]
    assert findings, "no FINDINGS.md with a generated table"
    for path in findings:
        text = path.read_text()
        assert render_blocks(text, path.parent) == text, f"{path} differs from its report: run `make readme`"


def test_a_hand_edited_number_is_caught(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = BLOCK.search(text)
    body = block.group("body")
    edited = body.replace("±", "+/-", 1)  # any change inside the block
    assert edited != body
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(body, edited))
    for other in BLOCK.finditer(text):  # every block's report, not only the edited one
        name = other.group("path").partition("#")[0]
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    assert main([str(readme), "--check"]) == 1
    assert main([str(readme)]) == 0 and readme.read_text() == text  # make readme restores it


def test_headline_table_rounds_once_from_the_csv():
    summary = pd.DataFrame([
        {"scenario": "pmnist", "label": "naive", "n_seeds": 3, "acc_mean": 0.47154, "acc_ci95": 0.0126,
         "forgetting_mean": 0.10049, "forgetting_ci95": math.nan, "plasticity_mean": 0.9, "plasticity_ci95": 0.01,
         "p_acc_vs_naive_holm": math.nan},
        {"scenario": "pmnist", "label": "ewc", "n_seeds": 3, "acc_mean": 0.5, "acc_ci95": 0.02,
         "forgetting_mean": 0.05, "forgetting_ci95": 0.01, "plasticity_mean": 0.88, "plasticity_ci95": 0.02,
         "p_acc_vs_naive_holm": 0.0004},
    ])
    table = headline_table(summary)
    assert "| naive | 47.2 ± 1.3 | 10.0 | 90.0 ± 1.0 | - |" in table
    assert "| ewc | 50.0 ± 2.0 | 5.0 ± 1.0 | 88.0 ± 2.0 | <0.001 |" in table


def test_a_block_naming_a_markdown_file_quotes_its_first_table(tmp_path):
    (tmp_path / "CONTROLS.md").write_text("# Planned\n\nprose\n\n| a | b |\n| --- | ---: |\n| x | 1.5 |\n\nafter\n| c |\n")
    doc = "intro\n<!-- BEGIN generated: CONTROLS.md -->\nstale\n<!-- END generated -->\nend\n"
    assert render_blocks(doc, tmp_path) == (
        "intro\n<!-- BEGIN generated: CONTROLS.md -->\n| a | b |\n| --- | ---: |\n| x | 1.5 |\n<!-- END generated -->\nend\n"
    )


def test_a_block_can_quote_one_section_of_a_markdown_file(tmp_path):
    (tmp_path / "gap.md").write_text("# Gap\n\n## pmnist\n\n| a |\n| --- |\n| 1 |\n\n## split_mnist\n\n| a |\n| --- |\n| 2 |\n")
    text = "<!-- BEGIN generated: gap.md#split_mnist -->\n<!-- END generated -->\n"
    assert render_blocks(text, tmp_path) == "<!-- BEGIN generated: gap.md#split_mnist -->\n| a |\n| --- |\n| 2 |\n<!-- END generated -->\n"
    assert "| 1 |" in render_blocks(text.replace("#split_mnist", ""), tmp_path)
    with pytest.raises(ValueError, match="no section '## cifar'"):
        render_blocks(text.replace("split_mnist", "cifar"), tmp_path)
