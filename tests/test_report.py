"""build_report end to end on synthetic run dirs: files, CSVs, statistics, compare."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clbench import metrics as M
from clbench.errors import ClbenchError
from clbench.report import build_report, load_run, write_summary_csv
from clbench.report.aggregate import STAT_KEYS, analyze, paired_p, seed_stats
from clbench.report.plots import pareto_front, render_plots
from clbench.report.stats import holm, mde_in_sd, paired_diff
from clbench.report.synthetic import (
    result_with_matrix,
    synthetic_result,
    write_result,
    write_synthetic_run,
)
from clbench.report.tables import SUMMARY_COLUMNS

# Student t quantile t_{0.975, 2} in closed form: for 2 dof, F(t) = 1/2 + t / (2 sqrt(t^2 + 2)).
T_975_DF2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    write_synthetic_run(
        d, scenarios=("pmnist", "split_mnist"), strategies=("naive", "ewc", "replay", "joint")
    )
    return d


# --------------------------------------------------------------------------- statistics
def test_seed_stats_mean_std_and_t_interval():
    mean, std, ci = seed_stats([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert ci == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3))
    assert seed_stats([0.7])[0] == 0.7 and all(math.isnan(x) for x in seed_stats([0.7])[1:])
    assert math.isnan(seed_stats([0.7, float("nan")])[0])


def test_paired_t_test_matches_on_seed_only():
    a = {0: 0.80, 1: 0.85, 2: 0.90, 5: 0.99}  # seed 5 has no partner
    b = {0: 0.70, 1: 0.80, 2: 0.70, 3: 0.10}  # nor seed 3
    d = np.array([0.10, 0.05, 0.20])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    p, n = paired_p(a, b)
    assert n == 3
    assert p == pytest.approx(1 - abs(t) / math.sqrt(t**2 + 2))  # two-sided p for 2 dof
    assert math.isnan(paired_p({0: 0.5}, {0: 0.4})[0])  # one pair: no test
    assert paired_p({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})[0] == 1.0  # identical rows
    # A constant shift has zero variance: no t-test (NaN), never p = 0.
    assert math.isnan(paired_p({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})[0])


def test_paired_diff_ci_and_zero_variance_status():
    d = paired_diff({0: 0.80, 1: 0.85, 2: 0.90}, {0: 0.70, 1: 0.80, 2: 0.70})
    sd = float(np.std([0.10, 0.05, 0.20], ddof=1))
    assert (d.n, d.status) == (3, "ok") and d.mean == pytest.approx(0.35 / 3)
    assert d.sd == pytest.approx(sd) and d.ci95 == pytest.approx(T_975_DF2 * sd / math.sqrt(3))
    # A shift that floats make unequal by 1e-17 is still constant, not p ~ 1e-15.
    shifted = paired_diff({0: 0.1 + 0.2, 1: 0.3}, {0: 0.2, 1: 0.2})
    assert shifted.status == "constant" and math.isnan(shifted.p)
    assert shifted.mean == pytest.approx(0.1) and shifted.ci95 == 0.0
    same = paired_diff({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert (same.status, same.p, same.mean) == ("identical", 1.0, 0.0)
    assert paired_diff({0: 0.5}, {0: 0.4}).status == "too few"


def test_holm_matches_statsmodels_and_skips_nan():
    p = [0.01, float("nan"), 0.04, 0.03]
    # Three tests: 0.01 * 3, then max(0.03, 0.03 * 2), then max(0.06, 0.04 * 1).
    assert holm(p)[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm(p)[1])


def test_minimum_detectable_effect_shrinks_with_seeds():
    # Power of the two-sided paired test at the MDE is 0.8 (noncentral t, n - 1 dof).
    for n in (3, 5, 10):
        d, crit = mde_in_sd(n), stats.t.ppf(0.975, n - 1)
        nc = d * math.sqrt(n)
        assert stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) == pytest.approx(
            0.8, abs=1e-6
        )
    assert mde_in_sd(3) > mde_in_sd(5) > mde_in_sd(10) > 0
    assert math.isnan(mde_in_sd(1))


def test_holm_family_counts_a_pair_shown_twice_once(run_dir):
    """ewc's best baseline is replay and replay's is ewc: one test, in the family once."""
    s = analyze(load_run(run_dir)).summary
    s = s[s["scenario"] == "pmnist"].set_index("label")
    assert (s.loc["ewc", "best_baseline"], s.loc["replay", "best_baseline"]) == ("replay", "ewc")
    assert s.loc["naive", "best_baseline"] == "replay"  # naive-replay on ACC is also shown twice
    # Shown: ewc and replay vs naive (ACC, forgetting), ewc-replay (ACC), joint vs naive
    # (ACC, forgetting) and joint vs replay (ACC): 8 distinct tests of the 10 p-values shown.
    shown = [s.loc[lab, f"p_{k}_vs_naive"] for lab in ("ewc", "replay", "joint")
             for k in ("acc", "forgetting")]  # fmt: skip
    shown += [s.loc[lab, "p_acc_vs_best"] for lab in ("naive", "ewc", "replay", "joint")]
    assert all(np.isfinite(shown)) and len(set(shown)) == 8
    assert (s["holm_family_size"] == 8).all()
    assert s.loc["ewc", "p_acc_vs_best_holm"] == s.loc["replay", "p_acc_vs_best_holm"]
    assert s.loc["naive", "p_acc_vs_best_holm"] == s.loc["replay", "p_acc_vs_naive_holm"]
    smallest = min(shown)
    holm_columns = ["p_acc_vs_naive_holm", "p_forgetting_vs_naive_holm", "p_acc_vs_best_holm"]
    assert min(s[holm_columns].min()) == pytest.approx(min(1.0, 8 * smallest))


def test_pareto_front_respects_metric_direction():
    pts = [(10, 0.5), (20, 0.7), (15, 0.4), (30, 0.6)]
    assert pareto_front(pts, True) == [(10, 0.5), (20, 0.7)]
    assert pareto_front(pts, False) == [(10, 0.5), (15, 0.4)]


# --------------------------------------------------------------------------- outputs
def test_all_formats_are_written(run_dir):
    result = build_report(run_dir)
    names = {p.name for p in result.paths}
    expected = {"summary.md", "summary.csv", "long.csv", "summary.tex", "report.html"}
    for scenario in ("pmnist", "split_mnist"):
        expected |= {
            f"{scenario}__{k}.png"
            for k in ("heatmaps", "seen_average", "forgetting", "stability_plasticity", "pareto")
        }
    assert names == expected
    assert result.out_dir == run_dir / "report"
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.paths)
    assert all(
        p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.paths if p.suffix == ".png"
    )
    assert "24 valid cell(s)" in result.text and "best ACC replay" in result.text


def test_formats_subset_and_unknown_format(run_dir, tmp_path):
    result = build_report(run_dir, out_dir=tmp_path / "out", formats="md,csv")
    assert sorted(p.name for p in result.paths) == ["long.csv", "summary.csv", "summary.md"]
    with pytest.raises(
        ClbenchError, match="unknown report format.*pdf.*valid: md, csv, tex, html, png"
    ):
        build_report(run_dir, formats=("md", "pdf"))


def test_wide_and_long_csv_agree_with_metrics(run_dir):
    result = build_report(run_dir, formats="csv")
    wide = pd.read_csv(result.out_dir / "summary.csv")
    long = pd.read_csv(result.out_dir / "long.csv")
    assert list(wide.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert len(wide) == 8 and set(wide["n_seeds"]) == {3}

    # Recompute one row by hand from the stored cells.
    cells = [
        c for c in load_run(run_dir).cells if c["scenario"] == "pmnist" and c["label"] == "ewc"
    ]
    accs = [M.final_average(M.as_matrix(c["matrix"])) for c in cells]
    row = wide[(wide["scenario"] == "pmnist") & (wide["label"] == "ewc")].iloc[0]
    assert row["acc_mean"] == pytest.approx(np.mean(accs))
    assert row["acc_std"] == pytest.approx(np.std(accs, ddof=1))
    assert row["best_baseline"] == "replay"
    assert row["p_acc_vs_naive"] < 0.05

    # Tidy: one row per cell and scalar metric, plus per-experience forgetting (T-1 = 4 each).
    assert len(long) == 24 * len(STAT_KEYS) + 24 * 4
    acc_rows = long[
        (long["metric"] == "acc") & (long["label"] == "ewc") & (long["scenario"] == "pmnist")
    ]
    assert sorted(acc_rows["value"]) == pytest.approx(sorted(accs))
    assert acc_rows["p_vs_naive"].nunique() == 1 and acc_rows["best_baseline"].iloc[0] == "replay"
    # Holm-adjusted p in long.csv where the tables show the test, NaN elsewhere (BWT: no table).
    assert (acc_rows["p_vs_naive_holm"] == row["p_acc_vs_naive_holm"]).all()
    assert row["p_acc_vs_naive"] < row["p_acc_vs_naive_holm"] <= 1
    bwt_rows = long[(long["metric"] == "bwt") & (long["label"] == "ewc")]
    assert bwt_rows["p_vs_naive"].notna().all() and bwt_rows["p_vs_naive_holm"].isna().all()
    per_exp = long[long["metric"] == "forgetting_exp"]
    assert sorted(per_exp["experience"].unique()) == [0, 1, 2, 3]


def test_write_summary_csv_variants(run_dir, tmp_path):
    path = write_summary_csv(run_dir)
    assert path == run_dir / "summary.csv"
    frame = pd.read_csv(path)
    assert list(frame.columns) == SUMMARY_COLUMNS
    assert len(frame) == 8

    results = [synthetic_result("pmnist", "ewc", s) for s in (0, 1)]
    results.append(synthetic_result("pmnist", "ewc", 2) | {"status": "failed", "error": "boom"})
    out = write_summary_csv(results, tmp_path / "from_dicts.csv")
    assert pd.read_csv(out)["n_seeds"].tolist() == [2]
    with pytest.raises(ClbenchError, match="give `path`"):
        write_summary_csv(results)

    # All cells failed: the runner still gets a (header-only) file, not an exception.
    failed_dir = tmp_path / "failed_run"
    write_result(
        failed_dir, synthetic_result("pmnist", "ewc", 0) | {"status": "failed", "error": "x"}
    )
    assert list(pd.read_csv(write_summary_csv(failed_dir)).columns) == SUMMARY_COLUMNS


def test_lower_is_better_metric_signs_and_labels(tmp_path):
    run_dir = tmp_path / "lm_run"
    for seed, d in enumerate((0.0, 0.02)):
        # naive: loss on exp 0 rises from 1.4 to 2.0 (forgets); ewc: rises only to 1.5.
        naive = [[1.5 + d, 8.0], [2.0 + d, 1.6 + d]]
        ewc = [[1.4 + d, 8.0], [1.5 + d, 1.7 + d]]
        for label, matrix in (("naive", naive), ("ewc", ewc)):
            cell = result_with_matrix("brown", label, seed, matrix, [8.0, 8.0], metric_name="bpc")
            write_result(run_dir, cell | {"higher_is_better": False})
    result = build_report(run_dir, formats=("md", "csv", "png"))
    s = result.summary.set_index("label")
    assert s.loc["naive", "forgetting_mean"] == pytest.approx(0.5)  # 2.0 - 1.5: positive = worse
    assert s.loc["ewc", "forgetting_mean"] == pytest.approx(0.1)
    assert s.loc["naive", "bwt_mean"] == pytest.approx(-0.5)  # the loss went up: negative
    assert s.loc["ewc", "best_baseline"] == "naive"
    text = (result.out_dir / "summary.md").read_text()
    assert "## brown (class_il, T=2, bpc, lower is better)" in text
    assert "| Final bpc (bpc) ↓ | Forgetting (bpc) ↓ |" in text
    assert "%" not in text.split("Table 1.")[0]  # no percent anywhere in the table
    assert "| ewc | 2 | **1.610 ± 0.127** | **0.100 ± 0.000** |" in text  # lower bpc is bold
    assert "(the rise of the loss)" in text


def test_single_experience_and_nan_cells_do_not_crash(tmp_path):
    run_dir = tmp_path / "edge_run"
    for seed in (0, 1):
        write_result(run_dir, result_with_matrix("one_exp", "naive", seed, [[0.8 + seed / 100]]))
        write_result(run_dir, result_with_matrix("holes", "naive", seed, [[0.9, 0.1], [None, 0.8]]))
        write_result(run_dir, result_with_matrix("holes", "ewc", seed, [[0.9, 0.1], [0.7, 0.8]]))
    result = build_report(run_dir)
    s = result.summary.set_index(["scenario", "label"])
    assert s.loc[("one_exp", "naive"), "acc_mean"] == pytest.approx(0.805)
    assert math.isnan(s.loc[("one_exp", "naive"), "forgetting_mean"])
    assert math.isnan(s.loc[("holes", "naive"), "acc_mean"])
    text = (result.out_dir / "summary.md").read_text()
    assert "| naive | 2 | 80.50 ± 6.35 | n/a ± n/a | n/a | n/a |" in text
    assert not (result.out_dir / "one_exp__forgetting.png").exists()  # undefined for T = 1
    assert (result.out_dir / "one_exp__heatmaps.png").exists()


def test_compare_runs_side_by_side(tmp_path):
    before, after = tmp_path / "a" / "run", tmp_path / "b" / "run"
    write_synthetic_run(before, scenarios=("pmnist",), strategies=("naive", "ewc", "replay"))
    write_synthetic_run(after, scenarios=("pmnist",), strategies=("naive", "ewc"))
    for cell in load_run(after).cells:  # the change: ewc's final row is 1.0-1.2 points better
        if cell["label"] == "ewc":
            bump = 0.01 + 0.001 * cell["seed"]  # seeds 0, 1, 2
            cell["matrix"][-1] = [v + bump for v in cell["matrix"][-1]]
            write_result(after, {k: v for k, v in cell.items() if k != "_path"})
    result = build_report(before, compare=[after], formats="md")
    names = {p.name for p in result.paths}
    assert {"compare.md", "compare.csv"} <= names
    frame = pd.read_csv(result.out_dir / "compare.csv")
    assert set(frame["run"]) == {"run", "run#2"}  # same directory names, told apart
    ewc = frame[(frame["label"] == "ewc") & (frame["run_index"] == 1)].iloc[0]
    assert ewc["delta_acc_vs_first"] == pytest.approx(0.011)
    assert ewc["delta_forgetting_vs_first"] == pytest.approx(-0.011)
    assert ewc["p_acc_vs_first"] < 0.01 and ewc["n_pairs_vs_first"] == 3
    naive = frame[(frame["label"] == "naive") & (frame["run_index"] == 1)].iloc[0]
    assert naive["delta_acc_vs_first"] == pytest.approx(0.0)
    assert naive["status_acc_vs_first"] == "identical" and naive["p_acc_vs_first"] == 1.0
    md = (result.out_dir / "compare.md").read_text()
    assert "| ewc | 3 |" in md and "+1.10" in md
    assert "| replay | 3 |" in md and "absent" in md  # replay only ran in the first run
    # One Holm family per scenario table: ewc's test and naive's (identical, p = 1); replay
    # has no partner.
    family = frame.loc[frame["run_index"] == 1, "p_acc_vs_first"].dropna()
    assert len(family) == 2
    assert ewc["p_acc_vs_first_holm"] == pytest.approx(min(1.0, 2 * family.min()))
    assert "Holm-Bonferroni adjusted over this table's family" in md and "2 test(s)" in md


def test_compare_with_itself_says_identical(tmp_path):
    run = tmp_path / "run"
    write_synthetic_run(run, scenarios=("pmnist",), strategies=("naive", "ewc"))
    result = build_report(run, compare=[run], formats="md")
    frame = pd.read_csv(result.out_dir / "compare.csv")
    later = frame[frame["run_index"] == 1]
    assert set(later["status_acc_vs_first"]) == {"identical"}
    md = (result.out_dir / "compare.md").read_text()
    assert md.count("| identical |") == 2 and "<0.001" not in md


def test_compare_run_without_results_is_named(tmp_path, run_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClbenchError, match="empty"):
        build_report(run_dir, compare=[tmp_path / "empty"])


def test_plots_are_the_same_in_one_or_several_processes(tmp_path):
    write_synthetic_run(tmp_path / "run", scenarios=("pmnist",), strategies=("naive", "ewc"), T=3)
    analysis = analyze(load_run(tmp_path / "run"))
    serial = render_plots(analysis, jobs=1)
    forked = render_plots(analysis, jobs=2)
    kinds = ("heatmaps", "seen_average", "forgetting", "stability_plasticity", "pareto")
    assert [p.filename for p in serial] == [f"pmnist__{k}.png" for k in kinds]
    assert [p.png for p in serial] == [p.png for p in forked]


def test_lower_is_better_plots_say_so(tmp_path):
    from clbench.report import plots

    run_dir = tmp_path / "lm"
    write_synthetic_run(run_dir, ("brown",), ("naive", "ewc"), T=3, metric_name="bpc",
                        higher_is_better=False)  # fmt: skip
    analysis = analyze(load_run(run_dir))
    info, labels = analysis.scenarios["brown"], ["naive", "ewc"]
    style = plots._styles(labels)
    heat = plots._heatmaps(analysis, info, labels, style)
    assert heat.axes[0].images[0].get_cmap().name == "viridis_r"  # low loss is bright
    assert heat.axes[-1].get_ylabel() == "bpc, lower is better"  # the colour bar
    bars = plots._forgetting_bars(analysis, info, labels, style)
    assert bars.axes[0].get_ylabel() == "forgetting: rise of bpc\npositive = worse"
    pareto = plots._pareto(analysis, info, labels, style)
    assert pareto.axes[0].get_ylabel() == "final bpc, lower is better"
    for fig in (heat, bars, pareto):
        plots.plt.close(fig)


def test_unusual_runs_still_render(tmp_path):
    """Only a joint row, a single strategy, and T above the annotation limit."""
    run_dir = tmp_path / "odd"
    write_synthetic_run(run_dir, ("only_joint",), ("joint",), seeds=(0,), T=2)
    write_synthetic_run(run_dir, ("long_stream",), ("ewc",), seeds=(0, 1), T=12)
    result = build_report(run_dir)
    assert {p.name for p in result.paths} >= {"only_joint__heatmaps.png", "long_stream__pareto.png"}
    s = result.summary.set_index("scenario")
    assert s.loc["only_joint", "best_baseline"] == "" and s.loc["long_stream", "n_seeds"] == 2
    assert "long_stream: best ACC ewc" in result.text
    md = (result.out_dir / "summary.md").read_text()
    # No naive row: no differences, no tests, and the caption says why.
    assert "| ewc | 2 |" in md and md.count("the row labelled naive, absent here") == 2
    assert "n/a ± n/a" not in md
