"""The study (docs/study.md): its suites' sweep rows and seed cuts, the collection of finished
parts into the committed report, the planned contrasts with one Holm family, the reading of
forgetting at equal plasticity, and the whole pipeline on smoke streams (`make study-smoke`)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from clbench.cli import main
from clbench.config import load_suite
from clbench.errors import ConfigError
from clbench.report.load import FailedCell
from clbench.report.study import answer_frame, answer_markdown, build, part_suites, words_markdown
from clbench.report.study.collect import collect
from clbench.report.study.contrasts import Contrast, Spec, contrast_frame, load_spec, reading
from clbench.report.study.frontier import forgetting_on_curve, pareto_front
from clbench.resolve import expand_suite

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
name = "s"
profile = "smoke"
seeds = [0, 1, 2]
scenarios = ["pmnist"]
strategies = []

[[variants]]
label = "ewc"
strategy = "ewc"

[[variants]]
label = "sweep_ewc_100"
strategy = "ewc"
tuned_as = "ewc"
set = { "strategy.ewc_lambda" = 100.0 }

[[variants]]
label = "few"
strategy = "naive"
seeds = [0, 2]
"""


def _suite(tmp_path, text=SUITE):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_suite(path)


def test_a_sweep_point_takes_its_arms_tuned_values_but_keeps_its_own_knob(tmp_path):
    record = {"values": {"lr": 0.0123, "strategy.ewc_lambda": 3.0}, "protocol": "first_k", "trials": 4,
              "seeds": [100], "cpu_seconds": 1.0}
    cells = expand_suite(_suite(tmp_path), tuned={("pmnist", "ewc"): record})
    by = {(c.label, c.seed): c for c in cells}
    assert by[("ewc", 0)].train.lr == 0.0123 and by[("ewc", 0)].strategy_args["ewc_lambda"] == 3.0
    sweep = by[("sweep_ewc_100", 1)]
    assert sweep.train.lr == 0.0123 and sweep.strategy_args["ewc_lambda"] == 100.0
    assert sweep.tuning == {"role": "borrowed", "from": "ewc", "values": {"lr": 0.0123}}
    assert sorted(s for label, s in by if label == "few") == [0, 2]  # the variant's seeds only
    untuned = {c.label: c for c in expand_suite(_suite(tmp_path))}
    assert untuned["sweep_ewc_100"].tuning["from"] == "ewc"  # the curve is known without tuning too


@pytest.mark.parametrize("edit, message", [
    ('seeds = [0, 2]', None),
    ('seeds = [0, 7]', "variant 'few' has seeds [7] the suite does not run; accepted: some of the suite's seeds"),
    ('tuned_as = "ewc"\nseeds = [0]', None),
])
def test_variant_seeds_must_be_the_suites(tmp_path, edit, message):
    text = SUITE.replace('seeds = [0, 2]', edit)
    if message is None:
        expand_suite(_suite(tmp_path, text))
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        expand_suite(_suite(tmp_path, text))


def test_tuned_as_must_name_a_tuned_row(tmp_path):
    with pytest.raises(ConfigError, match="variant 'sweep_ewc_100' has tuned_as 'ewcc'; accepted: another row's label \\(ewc, few\\)"):
        expand_suite(_suite(tmp_path, SUITE.replace('tuned_as = "ewc"', 'tuned_as = "ewcc"')))
    text = SUITE + '\n[tune.sweep_ewc_100]\nlr = {log = [0.01, 0.1]}\n'
    with pytest.raises(ConfigError, match="takes 'ewc''s tuned values and has a search space of its own"):
        expand_suite(_suite(tmp_path, text))


def _result(tmp_path, cell_id, status="ok", **extra):
    d = tmp_path / "cells" / cell_id
    d.mkdir(parents=True)
    scenario, label, seed, _ = cell_id.split("__")
    data = {"schema_version": 2, "status": status, "scenario": scenario, "label": label, "seed": int(seed[4:]),
            "error": "NonFiniteLossError: loss is nan" if status == "failed" else None, **extra}
    if status == "ok":
        data |= {"strategy": "naive", "metric_name": "accuracy", "higher_is_better": True, "n_experiences": 1,
                 "matrix": [[0.5]], "initial": [0.1], "wall_seconds": 1.0, "train_seconds": 1.0, "eval_seconds": 0.1,
                 "peak_rss_mb": 1.0, "num_params": 10, "cell_id": cell_id, "config_hash": cell_id[-3:], "config": {}}
    (d / "result.json").write_text(json.dumps(data))
    return d


def test_collect_copies_finished_cells_and_replaces_an_older_configuration(tmp_path):
    run, report = tmp_path / "run", tmp_path / "report"
    _result(run, "pmnist__a__seed0__new")
    _result(run, "pmnist__a__seed1__new", status="failed")
    (run / "cells" / "pmnist__a__seed2__new").mkdir()  # interrupted: no result.json yet
    _result(report, "pmnist__a__seed0__old")  # the same row and seed under an older config
    _result(report, "pmnist__b__seed0__xyz")  # another part's cell: kept
    assert collect(run, report) == (2, 1, 1)
    assert sorted(p.name for p in (report / "cells").iterdir()) == [
        "pmnist__a__seed0__new", "pmnist__a__seed1__new", "pmnist__b__seed0__xyz"]
    assert json.loads((report / "cells" / "pmnist__a__seed1__new" / "result.json").read_text())["status"] == "failed"
    with pytest.raises(FileNotFoundError, match="does not exist: run the part first"):
        collect(tmp_path / "nothing", report)


def _long(values: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    rows = [{"scenario": s, "label": label, "metric": m, "seed": k, "value": v, "experience": math.nan}
            for (s, label, m), vs in values.items() for k, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_contrasts_are_paired_and_holm_corrected_as_one_family_per_kind():
    rng = np.random.default_rng(0)
    values = {}
    for s in ("pmnist", "split_mnist"):
        for label, shift in (("cms", 0.05), ("ewc", 0.0), ("replay", 0.02), ("mlp", 0.01)):
            for m in ("acc", "forgetting", "plasticity"):
                values[(s, label, m)] = list(0.5 + shift + rng.normal(0, 0.01, 5) + (0.1 if m == "plasticity" else 0))
    spec = Spec(0.03, (Contrast("C vs E", "cms", "ewc", "primary"), Contrast("C vs R", "cms", "replay", "primary"),
                       Contrast("C vs M", "cms", "mlp", "exploratory"), Contrast("absent", "cms", "nope", "primary")))
    frame = contrast_frame(_long(values), spec)
    assert len(frame) == 6 and "absent" not in set(frame.contrast)  # a stream without both rows is left out
    row = frame[(frame.contrast == "C vs E") & (frame.scenario == "split_mnist")].iloc[0]
    diffs = np.array(values[("split_mnist", "cms", "acc")]) - np.array(values[("split_mnist", "ewc", "acc")])
    assert row.acc_diff == pytest.approx(diffs.mean()) and row.acc_n == 5
    primary = frame[frame.kind == "primary"]
    raw = primary[["acc_p", "forgetting_p"]].to_numpy().ravel()
    expected = multipletests(raw, method="holm")[1].reshape(-1, 2)
    assert np.allclose(primary[["acc_p_holm", "forgetting_p_holm"]].to_numpy(), expected)
    assert set(primary.family_size) == {8} and set(frame[frame.kind == "exploratory"].family_size) == {4}


def test_forgetting_is_read_only_at_equal_plasticity():
    base = {"row": "cms", "forgetting_diff": -0.05, "forgetting_p_holm": 0.001, "plasticity_diff": 0.01}
    assert reading(pd.Series(base), 0.03, None) == "equal plasticity: cms forgets less (by 5.0 pp)"
    assert reading(pd.Series(base | {"forgetting_p_holm": 0.2}), 0.03, None) == \
        "equal plasticity: no forgetting difference detected"
    assert reading(pd.Series(base | {"forgetting_p_holm": math.nan, "forgetting_status": "too few"}), 0.03, None) == \
        "equal plasticity: too few paired seeds to test forgetting"
    unequal = pd.Series(base | {"plasticity_diff": -0.08})
    assert reading(unequal, 0.03, None) == \
        "not at equal plasticity (plasticity differs by -8.0 pp; the control has no stability-plasticity sweep)"
    assert reading(unequal, 0.03, {"n": 0, "gap": math.nan, "p_holm": math.nan}).endswith(
        "the control's sweep does not reach the row's plasticity)")
    assert "lies above (forgets less than) the control's sweep curve (by 2.0 pp)" in reading(
        unequal, 0.03, {"n": 5, "gap": -0.02, "p_holm": 0.01})
    assert "no difference from the control's sweep curve detected" in reading(
        unequal, 0.03, {"n": 5, "gap": -0.02, "p_holm": 0.3})
    assert reading(unequal, 0.03, {"n": 1, "gap": -0.002, "p_holm": math.nan}).endswith(
        "the control's sweep reaches the row's plasticity in only 1 seed: not tested)")


def test_a_contrast_read_on_fewer_seeds_names_the_failed_cells():
    """A diverged cell drops its seed from the pairing: the table and the words must say which
    side failed where, and a side with no ok cell at all is "not measured", not "not yet run"."""
    values = {("pmnist", label, m): [0.5 + 0.01 * k for k in range(3)]
              for label in ("hope", "tf") for m in ("acc", "forgetting", "plasticity")}
    spec = Spec(0.03, (Contrast("H vs T", "hope", "tf", "primary"), Contrast("H vs R", "hope", "tfr", "primary")))
    answer = answer_frame(contrast_frame(_long(values), spec), pd.DataFrame(), spec)
    failed = [FailedCell("p", f"c{k}", "pmnist", label, k, "NonFiniteLossError: HOPE diverged")
              for label, k in (("hope", 4), ("hope", 3), ("tfr", 0), ("other", 1))]
    failed.append(FailedCell("p", "c9", "split_mnist", "hope", 0, "RuntimeError: elsewhere"))
    expected = {("pmnist", x): "part" for x in ("hope", "tf", "tfr")}
    table = answer_markdown(answer, spec, "primary", expected, failed)
    assert "n=3<br>" in table and "<br>hope failed in seeds 3, 4 (NonFiniteLossError) |" in table
    assert ("| not measured: hope failed in seeds 3, 4 (NonFiniteLossError); tfr failed in seed 0 "
            "(NonFiniteLossError) |") in table
    assert "RuntimeError" not in table and "other" not in table  # another stream's and another row's cells
    assert "(3 seeds paired: hope failed in seeds 3, 4 (NonFiniteLossError))" in words_markdown(answer, spec, failed)
    assert "failed" not in answer_markdown(answer, spec, "primary", expected)


def test_the_curve_is_interpolated_per_seed_and_never_extrapolated():
    points = pd.DataFrame({"seed": [0, 0, 0, 1], "label": ["a", "b", "c", "a"],
                           "plasticity": [0.9, 0.7, 0.8, 0.8], "forgetting": [0.3, 0.1, 0.2, 0.2]})
    assert forgetting_on_curve(points, 0, 0.75) == pytest.approx(0.15)
    assert math.isnan(forgetting_on_curve(points, 0, 0.95))  # outside the sweep's range
    assert math.isnan(forgetting_on_curve(points, 1, 0.8))  # one point is no curve


def test_the_curve_is_the_controls_frontier_not_a_zigzag_through_every_point():
    """A knob that reaches one plasticity twice (CLINC150's EWC lambda 1 and 3e4) is read at its
    better setting: the dominated point is off the curve, and so is the range it would add."""
    points = pd.DataFrame({"seed": 0, "label": ["1e5", "1", "3e4", "1e4"],
                           "plasticity": [0.40, 0.76, 0.77, 0.81], "forgetting": [0.05, 0.69, 0.19, 0.29]})
    assert list(pareto_front(points).label) == ["1e5", "3e4", "1e4"]
    assert forgetting_on_curve(points, 0, 0.66) == pytest.approx(0.05 + 0.26 / 0.37 * 0.14)
    dominated_low = pd.DataFrame({"seed": 0, "label": ["a", "b", "c"],
                                  "plasticity": [0.3, 0.5, 0.8], "forgetting": [0.5, 0.1, 0.2]})
    assert math.isnan(forgetting_on_curve(dominated_low, 0, 0.4))
    assert forgetting_on_curve(dominated_low, 0, 0.65) == pytest.approx(0.15)


def test_the_contrasts_file_is_checked(tmp_path):
    spec = load_spec(ROOT / "suites" / "study" / "contrasts.toml")
    assert [c.name for c in spec.contrasts if c.kind == "primary"] == [
        "CMS vs EWC", "CMS vs replay", "HOPE vs matched Transformer", "HOPE + replay vs Transformer + replay"]
    bad = tmp_path / "c.toml"
    bad.write_text('[[primary]]\nname = "x"\nrow = "a"\n')
    with pytest.raises(ConfigError, match="primary\\[0\\] needs exactly name, row and control"):
        load_spec(bad)
    bad.write_text('plasticity_tolerance = 3\n[[primary]]\nname = "x"\nrow = "a"\ncontrol = "b"\n')
    with pytest.raises(ConfigError, match="bad plasticity_tolerance 3; accepted: a fraction"):
        load_spec(bad)


def test_a_label_runs_in_one_part_per_stream(tmp_path):
    """The report pairs cells by (stream, label, seed): one label in two parts would mix two rows."""
    from clbench.report.study import expected_rows

    (tmp_path / "a.toml").write_text(SUITE)
    (tmp_path / "b.toml").write_text(SUITE.replace('name = "s"', 'name = "t"').split("[[variants]]")[0]
                                     + '[[variants]]\nlabel = "few"\nstrategy = "replay"\n')
    with pytest.raises(ConfigError, match="row 'few' on pmnist is in parts 'a' and 'b'"):
        expected_rows(tmp_path)
    (tmp_path / "b.toml").write_text((tmp_path / "b.toml").read_text().replace('"few"', '"other"'))
    assert expected_rows(tmp_path)[("pmnist", "other")] == "b"


def test_every_primary_row_of_the_design_is_in_a_part():
    """The contrasts name rows the parts run: a renamed label would leave a contrast unmeasured."""
    from clbench.report.study import expected_rows

    expected = expected_rows(ROOT / "suites" / "study")
    spec = load_spec(ROOT / "suites" / "study" / "contrasts.toml")
    for c in (c for c in spec.contrasts if c.kind == "primary"):
        streams = {s for s, label in expected if label == c.row} & {s for s, label in expected if label == c.control}
        assert streams, c.name
    cms = {s for s, label in expected if label == "cms"}
    hope = {s for s, label in expected if label == "hope"}
    assert cms == {"pmnist", "split_mnist", "split_cifar100_features", "clinc150"}
    assert hope == {"pmnist", "split_mnist", "split_cifar100_features"}


def test_study_smoke_runs_every_arm_through_the_report(tmp_path, data_root, monkeypatch):
    """`make study-smoke`: both smoke parts, collected into one report like the study's parts."""
    if not (data_root / "text" / "clinc150" / "data_full.json").is_file():
        pytest.skip(f"text/ not found under {data_root}; set CLBENCH_DATA to the shared data folder (CI does)")
    monkeypatch.chdir(ROOT)  # the report reads suites/study_smoke for the design
    report = tmp_path / "report"
    for part in ("mnist", "clinc"):
        out = tmp_path / part
        assert main(["bench", f"suites/study_smoke/{part}.toml", "--out", str(out), "-q", "--data-root", str(data_root)]) == 0
        collect(out, report)
    written = build(report, ROOT / "suites" / "study" / "contrasts.toml", ROOT / "suites" / "study_smoke")
    assert {p.name for p in written} >= {"answer.md", "exploratory.md", "frontier.md", "cost.md", "status.md",
                                         "frontier_pmnist.png"}
    answer = (report / "answer.md").read_text()
    for name in ("CMS vs EWC", "CMS vs replay", "HOPE vs matched Transformer", "HOPE + replay vs Transformer + replay"):
        assert f"| {name} (" in answer and f"**{name}**" in answer
    table = pd.read_csv(report / "answer.csv")
    assert set(table[table.kind == "primary"].scenario) == {"pmnist", "clinc150"}
    assert "not in the design" in answer  # HOPE has no CLINC part
    assert "Every row of the design has cells." in (report / "status.md").read_text()
    frontier = pd.read_csv(report / "frontier.csv")
    assert set(frontier.control) >= {"cms_p1_ewc", "cms_p1_replay"}
    shutil.rmtree(report / "cells")


def test_the_committed_cells_are_what_the_parts_resolve_to():
    """A part's suite or tuned file edited after its cells were committed would make the report
    describe runs the suite no longer makes: every committed cell must be a cell of its part."""
    from clbench.cli import _tuned_records

    committed = {p.name for p in (ROOT / "reports" / "study" / "cells").iterdir()}
    assert committed, "no committed study cells"
    resolved = set()
    for path in part_suites(ROOT / "suites" / "study"):
        tuned = path.with_name(f"{path.stem}.tuned.toml")
        if not tuned.is_file():
            continue
        suite = load_suite(path)
        for c in expand_suite(suite, tuned=_tuned_records(str(tuned), suite)):
            resolved.add(f"{c.scenario}__{c.label}__seed{c.seed}__{c.config_hash()}")
    assert sorted(committed - resolved) == []
