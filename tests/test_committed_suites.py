"""Every committed suite resolves: its scenarios, strategies, variants, scenario and model
options are valid, and its committed tuned file (if any) matches its rows. A typo in a
suite would otherwise surface only when `make bench-*` reaches that cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.cli import _tuned_records
from clbench.config import load_suite
from clbench.resolve import expand_suite

SUITES = Path(__file__).resolve().parents[1] / "suites"
FILES = sorted(p for p in SUITES.glob("*.toml") if not p.name.endswith(".tuned.toml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_committed_suite_expands(path):
    suite = load_suite(path)
    tuned_path = path.with_name(f"{path.stem}.tuned.toml")
    tuned = _tuned_records(str(tuned_path), suite) if tuned_path.is_file() else None
    cells = expand_suite(suite, tuned=tuned)
    assert len(cells) >= len(suite.seeds)
    if tuned:
        assert all(c.tuning.get("role") == "tuned" for c in cells if (c.scenario, c.label) in tuned)


def test_the_cifar_suites_are_the_ones_make_runs():
    """The tracks of `make bench-cifar`: hope and its size control on tokens, the rest pooled."""
    cells = expand_suite(load_suite(SUITES / "cifar_quick.toml"))
    kinds = {c.label: c.scenario_args.get("features", "pooled") for c in cells}
    assert kinds["hope"] == kinds["transformer_matched"] == "tokens"
    assert {k for k, v in kinds.items() if v == "pooled"} >= {"naive", "joint", "replay", "der", "ncm", "ranpac", "cms"}
    assert {c.scenario for c in expand_suite(load_suite(SUITES / "cifar_scratch_quick.toml"))} == {"split_cifar100"}
