"""CONTROLS.md: planned row-vs-control comparisons computed from long.csv."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from clbench.report.controls import controls_table, main


def long_csv(values: dict[str, dict[str, list[float]]]) -> pd.DataFrame:
    rows = [{"scenario": "s", "label": label, "metric": metric, "seed": seed, "value": v, "experience": float("nan")}
            for label, metrics in values.items() for metric, vs in metrics.items() for seed, v in enumerate(vs)]
    return pd.DataFrame(rows)


VALUES = {
    "hope": {"acc": [0.10, 0.12, 0.11], "plasticity": [0.5, 0.6, 0.55], "forgetting": [0.3, 0.2, 0.25]},
    "ctrl": {"acc": [0.20, 0.21, 0.25], "plasticity": [0.8, 0.7, 0.9], "forgetting": [0.6, 0.5, 0.8]},
}


def test_differences_and_holm_match_scipy_and_statsmodels():
    table = controls_table(long_csv(VALUES), [("hope", "ctrl")])
    lines = [line for line in table.splitlines() if line.startswith("| s |")]
    assert [line.split("|")[4].strip() for line in lines] == ["ACC", "plasticity", "forgetting"]
    raw = [stats.ttest_rel(VALUES["hope"][m], VALUES["ctrl"][m]).pvalue for m in ("acc", "plasticity", "forgetting")]
    adjusted = multipletests(raw, method="holm")[1]
    acc = lines[0].split("|")
    assert acc[6].strip().startswith("-11.00 ± ")  # mean of (0.10-0.20, 0.12-0.21, 0.11-0.25) in pp
    assert float(acc[7]) == pytest.approx(raw[0], abs=5e-4) and float(acc[8]) == pytest.approx(adjusted[0], abs=5e-4)


def test_unknown_row_is_one_line(tmp_path, capsys):
    long_csv(VALUES).to_csv(tmp_path / "long.csv", index=False)
    assert main([str(tmp_path), "hope:transformer"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown row(s) transformer" in err and "ctrl, hope" in err and "\n" not in err
    assert main([str(tmp_path), "hope:ctrl"]) == 0 and (tmp_path / "CONTROLS.md").is_file()
