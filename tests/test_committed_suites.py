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
# The study's parts and its smoke variant live in folders; contrasts.toml is no suite.
FILES = sorted(p for pattern in ("*.toml", "study/*.toml", "study_smoke/*.toml") for p in SUITES.glob(pattern)
               if not p.name.endswith(".tuned.toml") and p.name != "contrasts.toml")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SUITES).with_suffix("")) for p in FILES])
def test_committed_suite_expands(path):
    suite = load_suite(path)
    tuned_path = path.with_name(f"{path.stem}.tuned.toml")
    tuned = _tuned_records(str(tuned_path), suite) if tuned_path.is_file() else None
    cells = expand_suite(suite, tuned=tuned)
    assert len(cells) >= len(suite.seeds)
    if tuned:
        assert all(c.tuning.get("role") == "tuned" for c in cells if (c.scenario, c.label) in tuned)
        own_keys = {v.label: v.set for v in suite.variants}
        for c in (c for c in cells if c.tuning.get("role") == "borrowed"):  # a sweep point: its arm's values
            arm = tuned[(c.scenario, c.tuning["from"])]["values"]  # except the knob it sets itself
            assert c.train.lr == pytest.approx(own_keys[c.label].get("lr", arm["lr"])), c.label


def test_the_cifar_suites_are_the_ones_make_runs():
    """The tracks of `make bench-cifar`: hope and its size control on tokens, the rest pooled."""
    cells = expand_suite(load_suite(SUITES / "cifar_quick.toml"))
    kinds = {c.label: c.scenario_args.get("features", "pooled") for c in cells}
    assert kinds["hope"] == kinds["transformer_matched"] == "tokens"
    assert {k for k, v in kinds.items() if v == "pooled"} >= {"naive", "joint", "replay", "der", "ncm", "ranpac", "cms"}
    assert {c.scenario for c in expand_suite(load_suite(SUITES / "cifar_scratch_quick.toml"))} == {"split_cifar100"}


def test_hope_ablations_use_the_full_models_tuned_lr_and_stream():
    """Ablations are not retuned: each row runs at the lr tuned for the full mid HOPE, on the
    headline suite's stream cut to its first experiences. Retuning suites/hope.toml without updating the ablation suite
    would compare ablations at a stale lr; this fails instead."""
    from clbench.tune.tuned_file import read_tuned

    tuned_lr = read_tuned(SUITES / "hope.tuned.toml")[("pmnist", "hope")]["values"]["lr"]
    headline = {c.label: c for c in expand_suite(load_suite(SUITES / "hope.toml"))}["hope"]
    cells = expand_suite(load_suite(SUITES / "hope_ablations.toml"))
    assert {c.label for c in cells} >= {"hope", "hope_no_dgd", "hope_no_momentum", "hope_no_retention", "hope_no_cms",
                                         "hope_static_k", "hope_static_v", "hope_raw_v", "hope_plain_w1"}
    for cell in cells:
        assert cell.train.lr == pytest.approx(tuned_lr, rel=1e-3), cell.label
        assert cell.model_args["size"] == "mid", cell.label
        shorter = {**headline.scenario_args, "n_experiences": cell.scenario_args["n_experiences"]}
        assert cell.scenario_args == shorter and shorter["n_experiences"] <= headline.scenario_args["n_experiences"]
