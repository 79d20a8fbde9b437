"""README tables are generated from committed reports (clbench/report/readme.py), and stay so."""

from __future__ import annotations

import math
import re
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


def test_a_section_without_a_table_is_quoted_whole(tmp_path):
    (tmp_path / "answer.md").write_text("# A\n\n## Answer table\n\n| a |\n| --- |\n\n## Answer in words\n\n- **x**: no.\n- y\n")
    text = "<!-- BEGIN generated: answer.md#Answer in words -->\n<!-- END generated -->\n"
    # the path of a block is one word: sections with spaces are named with their words joined by "-"
    assert "- **x**: no.\n- y\n<!--" in render_blocks(text.replace("Answer in words", "Answer-in-words"), tmp_path)


# README prose (outside generated blocks and code) may name settings and versions, never a
# result: every result number reaches the README through a generated block, rounded once from
# the committed report. These are the decimals its prose may hold, each with what it is.
PROSE_DECIMALS = {
    "0.6": "Avalanche version", "3.11": "CPython version", "2.14.1": "torch version", "0.29.1": "torchvision version",
    "0.1": "the val_fraction setting",
}
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:\.\d+)?(?![\w.]*\d)")


def prose(text: str) -> str:
    """README text without generated blocks, fenced code, inline code, links' targets and HTML comments."""
    text = BLOCK.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"<!--.*?-->", "", text, flags=re.S)


def stray_decimals(text: str) -> list[str]:
    return [d for d in DECIMAL.findall(prose(text)) if d not in PROSE_DECIMALS]


def test_readme_prose_quotes_no_number_by_hand():
    stray = stray_decimals((ROOT / "README.md").read_text())
    assert not stray, (f"README prose quotes {stray}: put results in a generated block (`make readme`), "
                       "or, for a setting or version, add it to PROSE_DECIMALS with what it is")


def test_a_hand_copied_result_in_prose_is_caught():
    text = (ROOT / "README.md").read_text()
    assert stray_decimals(text + "\nHOPE forgets 12.9 pp less, and ACC is 47.2%.\n") == ["12.9", "47.2"]
    assert stray_decimals("`lr=0.01` and [x](a/1.5.md) and torch 2.14.1") == []
