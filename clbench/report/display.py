"""Turn aggregated numbers into format-neutral display tables.

One `DisplayTable` per scenario is rendered to Markdown, LaTeX and HTML by the
writers, so the three always show the same values, units and bold marks.

Units: accuracy-like metrics are shown in % (differences in percentage points,
pp); anything else (bpc, perplexity, ...) in its own unit. CSV files keep the raw
values as stored in result.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from clbench.metrics import DIFFERENCE_BETTER_HIGH
from clbench.report.aggregate import ScenarioInfo

ACCURACY_LIKE = {"accuracy", "acc", "top1", "top1_accuracy", "balanced_accuracy", "f1", "macro_f1"}
NA = "n/a"


@dataclass(frozen=True)
class Units:
    scale: float  # multiply raw values by this for display
    level: str  # unit of level metrics (ACC, plasticity)
    delta: str  # unit of differences (forgetting, BWT, ...)
    decimals: int


def units_for(metric_name: str) -> Units:
    name = metric_name.lower()
    if name in ACCURACY_LIKE or name.endswith("accuracy"):
        return Units(100.0, "%", "pp", 2)
    return Units(1.0, metric_name, metric_name, 3)


@dataclass
class Cell:
    text: str
    spread: str = ""  # CI half-width; "" when the column shows no "±"
    bold: bool = False


@dataclass
class Column:
    header: str
    better: str | None = None  # "high", "low" or None: shown as an arrow
    numeric: bool = True


@dataclass
class DisplayTable:
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    caption: str
    anchor: str = ""  # a stable id for HTML links


# --------------------------------------------------------------------------- formatting
def fmt_number(x: float, decimals: int) -> str:
    if x is None or not math.isfinite(x):
        return NA
    return f"{round(x, decimals) + 0.0:.{decimals}f}"  # + 0.0: never "-0.00"


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return NA
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_params(n: float) -> str:
    if n is None or not math.isfinite(n):
        return NA
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


def row_name(label: str, strategy: str, is_reference: bool) -> str:
    name = label if label == strategy else f"{label} ({strategy})"
    return f"{name} (upper bound)" if is_reference else name


# --------------------------------------------------------------------------- summary tables
@dataclass(frozen=True)
class Spec:
    key: str
    header: str
    kind: str  # "level", "delta", "cost", "throughput"
    with_ci: bool = False
    decimals: int | None = None  # None: the metric's own


def acc_name(info: ScenarioInfo) -> str:
    """ "ACC" for accuracy; "Final bpc" for other metrics, where "accuracy" would mislead."""
    return "ACC" if units_for(info.metric_name).level == "%" else f"Final {info.metric_name}"


def summary_specs(info: ScenarioInfo) -> list[Spec]:
    u = units_for(info.metric_name)
    specs = [
        Spec("acc", f"{acc_name(info)} ({u.level})", "level", with_ci=True),
        Spec("forgetting", f"Forgetting ({u.delta})", "delta", with_ci=True),
        Spec("bwt", f"BWT ({u.delta})", "delta"),
        Spec("fwt", f"FWT ({u.delta})", "delta"),
        Spec("plasticity", f"Plasticity ({u.level})", "level"),
    ]
    if info.joint_label is not None:
        specs.append(Spec("intransigence", f"Intransigence ({u.delta})", "delta"))
    specs += [
        Spec("wall_seconds", "Wall time (s)", "cost", decimals=1),
        Spec("peak_rss_mb", "Peak RSS (MB)", "cost", decimals=0),
        Spec("num_params", "Params", "cost"),
        Spec("train_samples_per_s", "Train samples/s", "throughput", decimals=0),
    ]
    return specs


def _better(spec: Spec, info: ScenarioInfo) -> str:
    if spec.kind == "level":
        high = info.higher_is_better
    elif spec.kind == "delta":
        high = DIFFERENCE_BETTER_HIGH[spec.key]
    else:
        high = spec.kind == "throughput"  # costs: less is better; throughput: more
    return "high" if high else "low"


def summary_table(rows: pd.DataFrame, info: ScenarioInfo) -> DisplayTable:
    """The per-scenario table: strategies as rows, metrics ± CI, best values in bold."""
    u = units_for(info.metric_name)
    specs = summary_specs(info)
    columns = [Column("Strategy", numeric=False), Column("n")]
    columns += [Column(s.header, _better(s, info)) for s in specs]
    columns += [
        Column(f"p({acc_name(info)}) vs naive"),
        Column(f"p({acc_name(info)}) vs best baseline", numeric=False),
    ]
    body = []
    for _, r in rows.iterrows():
        line = [
            Cell(row_name(r["label"], r["strategy"], r["is_reference"])),
            Cell(str(r["n_seeds"])),
        ]
        for s in specs:
            line.append(_value_cell(r, s, u))
        line.append(Cell(fmt_p(r["p_acc_vs_naive"])) if r["label"] != "naive" else Cell("-"))
        best = r["best_baseline"]
        line.append(Cell(f"{best}: {fmt_p(r['p_acc_vs_best'])}" if best else "-"))
        body.append(line)
    _mark_best(body, rows, specs, info, u)
    n_values = sorted(set(rows["n_seeds"]))
    references = list(rows.loc[rows["is_reference"], "label"])
    return DisplayTable(
        title=_title(info),
        columns=columns,
        rows=body,
        caption=summary_caption(info, n_values, references),
        anchor=f"scenario-{info.name}",
    )


def _decimals(spec: Spec, u: Units) -> int:
    return u.decimals if spec.decimals is None else spec.decimals


def _scaled(value: float, spec: Spec, u: Units) -> float:
    return value * u.scale if spec.kind in ("level", "delta") else value


def _value_cell(r: pd.Series, spec: Spec, u: Units) -> Cell:
    mean = _scaled(r[f"{spec.key}_mean"], spec, u)
    if spec.key == "num_params":
        return Cell(fmt_params(mean))
    d = _decimals(spec, u)
    if not spec.with_ci:
        return Cell(fmt_number(mean, d))
    return Cell(fmt_number(mean, d), fmt_number(_scaled(r[f"{spec.key}_ci95"], spec, u), d))


def _mark_best(body, rows: pd.DataFrame, specs, info: ScenarioInfo, u: Units) -> None:
    """Bold the best displayed value per column (ties too); joint rows never count."""
    for col, spec in enumerate(specs, start=2):
        sign = 1.0 if _better(spec, info) == "high" else -1.0
        shown = {}
        for i, (_, r) in enumerate(rows.iterrows()):
            value = _scaled(r[f"{spec.key}_mean"], spec, u)
            if not r["is_reference"] and math.isfinite(value):
                shown[i] = sign * round(value, _decimals(spec, u))
        # Bold only separates rows: with one distinct value (e.g. equal parameter counts)
        # nothing is best.
        if len(set(shown.values())) > 1:
            best = max(shown.values())
            for i, v in shown.items():
                body[i][col].bold = v == best


def _title(info: ScenarioInfo) -> str:
    kind = f"{info.scenario_type}, " if info.scenario_type else ""
    direction = "higher" if info.higher_is_better else "lower"
    return f"{info.name} ({kind}T={info.n_experiences}, {info.metric_name}, {direction} is better)"


def summary_caption(info: ScenarioInfo, n_values: list[int], references: list[str]) -> str:
    """Definitions of every column, in plain ASCII so every writer can print it."""
    u = units_for(info.metric_name)
    m = info.metric_name
    n = str(n_values[0]) if len(n_values) == 1 else f"{n_values[0]}-{n_values[-1]}"
    shown = "shown in %, differences in percentage points (pp)" if u.level == "%" else f"in {m}"
    if info.higher_is_better:
        forget = "max over l in [j, T-2] of R[l][j] minus R[T-1][j]"
        sign = ""
    else:
        forget = "R[T-1][j] minus min over l in [j, T-2] of R[l][j] (the rise of the loss)"
        sign = " Both are sign-flipped for this lower-is-better metric, so positive means better."
    parts = [
        f"R[i][j] = {m} on experience j after training experience i, T = {info.n_experiences};"
        f" {shown}; n = {n} seed(s) per row.",
        f"{acc_name(info)}: final average, mean over j of R[T-1][j] (Lopez-Paz & Ranzato 2017).",
        f"Forgetting: Chaudhry et al. (2018) average over j < T-1 of {forget}; positive = worse.",
        "BWT: mean over j < T-1 of R[T-1][j] - R[j][j]; FWT: mean over j >= 1 of"
        f" R[j-1][j] - b[j], b = untrained model (Lopez-Paz & Ranzato 2017).{sign}",
        "Plasticity: mean over j of R[j][j].",
    ]
    if info.joint_label is not None:
        parts.append(
            f"Intransigence: mean over j of {info.joint_label}'s R[T-1][j] (mean over its seeds)"
            " minus R[j][j] (Chaudhry et al. 2018); positive = worse."
        )
    parts += [
        "+/- is the 95% confidence interval half-width over seeds (Student t, n-1 dof),"
        " n/a when n = 1.",
        f"p: two-sided paired t-test on {acc_name(info)} over the seeds both rows share (vs naive"
        f" and vs the best other baseline by mean {acc_name(info)}).",
        "Bold: best value per column"
        + (f" ({', '.join(references)} excluded: upper-bound reference)." if references else "."),
    ]
    return " ".join(parts)
