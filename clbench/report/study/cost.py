"""What each arm of the study cost: training speed, wall time and tuning, beside its control's.

From the report's summary.csv: parameters, train samples/s, wall seconds per cell (mean over
seeds) and the CPU-seconds its tuning spent. For every contrast the wall-time ratio row /
control says when a gain was bought with compute (docs/study.md asks that a 10x cost be said).
"""

from __future__ import annotations

import math

import pandas as pd

from clbench.report.display import fmt_number, fmt_params

EXPENSIVE = 10.0  # a wall-time ratio at least this large is called out in words


def _get(summary: pd.DataFrame, scenario: str, label: str, column: str) -> float:
    row = summary[(summary.scenario == scenario) & (summary.label == label)]
    if row.empty or column not in row or pd.isna(row[column].iloc[0]):
        return math.nan
    return float(row[column].iloc[0])


def cost_frame(summary: pd.DataFrame, contrasts: pd.DataFrame) -> pd.DataFrame:
    """One row per (contrast, scenario): both rows' costs and the wall-time ratio."""
    records = []
    for c in contrasts.itertuples():
        record = {"contrast": c.contrast, "kind": c.kind, "scenario": c.scenario, "row": c.row, "control": c.control}
        for who, label in (("row", c.row), ("control", c.control)):
            for column, name in (("num_params_mean", "params"), ("train_samples_per_s_mean", "samples_per_s"),
                                 ("wall_seconds_mean", "wall_s"), ("tuning_cpu_seconds", "tuning_cpu_s")):
                record[f"{who}_{name}"] = _get(summary, c.scenario, label, column)
        record["wall_ratio"] = record["row_wall_s"] / record["control_wall_s"]
        records.append(record)
    return pd.DataFrame.from_records(records)


def cost_markdown(frame: pd.DataFrame) -> str:
    lines = ["| contrast | stream | row: params, samples/s, wall s, tuning CPU-s | control: params, samples/s, wall s, "
             "tuning CPU-s | wall row / control |", "| --- | --- | --- | --- | ---: |"]
    for r in frame.itertuples():
        both = []
        for who in ("row", "control"):
            label = getattr(r, who)
            both.append(f"{label}: {fmt_params(getattr(r, f'{who}_params'))}, "
                        f"{fmt_number(getattr(r, f'{who}_samples_per_s'), 0)}, {fmt_number(getattr(r, f'{who}_wall_s'), 1)}, "
                        f"{fmt_number(getattr(r, f'{who}_tuning_cpu_s'), 0)}")
        ratio = fmt_number(r.wall_ratio, 2) + ("x **(10x or more)**" if r.wall_ratio >= EXPENSIVE else "x")
        lines.append(f"| {r.contrast} | {r.scenario} | {both[0]} | {both[1]} | {ratio} |")
    return "\n".join(lines) + "\n"
