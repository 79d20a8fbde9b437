"""Turn aggregated numbers into format-neutral display tables.

One `DisplayTable` per scenario is rendered to Markdown, LaTeX and HTML by the
writers, so the three always show the same values, units and bold marks.

Units: accuracy-like metrics are shown in % (differences in percentage points,
pp); anything else (bpc, perplexity, ...) in its own unit. CSV files keep the raw
values as stored in result.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from clbench.metrics import DIFFERENCE_BETTER_HIGH
from clbench.report.aggregate import NAIVE, ScenarioInfo
from clbench.report.stats import ALPHA, CONSTANT, IDENTICAL, POWER, mde_in_sd

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


def fmt_signed(x: float, decimals: int) -> str:
    text = fmt_number(x, decimals)
    return text if text.startswith("-") or text == NA else f"+{text}"


def fmt_test(p: float, p_holm: float, status: str) -> str:
    """ "0.012 (0.048)": raw p, then Holm-adjusted; words instead of p for zero variance."""
    if status == IDENTICAL:
        return "identical"
    if status == CONSTANT:
        return "constant diff"
    if p is None or not math.isfinite(p):
        return NA
    return f"{fmt_p(p)} ({fmt_p(p_holm)})"


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


def not_applicable(info: ScenarioInfo) -> dict[str, str]:
    """Metric keys shown as n/a in this scenario's table, with the reason (for the caption)."""
    if info.scenario_type == "class_il":
        return {
            "fwt": "FWT: n/a in class-IL: before training on experience j the head has never"
            " seen j's classes, so every method scores R[j-1][j] = 0 and FWT is -mean b[j],"
            " set by the untrained model, not by the method (the CSV files keep the value)"
        }
    return {}


# A column beyond the metric specs: its header and how a summary row fills it.
# To add one (e.g. tuning cost), append to the list `extra_columns` returns.
ExtraColumn = tuple[Column, Callable[[pd.Series], Cell]]


def extra_columns(info: ScenarioInfo) -> list[ExtraColumn]:
    """Paired comparisons with the reference row: effect size, raw and Holm p, MDE."""
    u = units_for(info.metric_name)
    acc = acc_name(info)
    high = "high" if info.higher_is_better else "low"
    columns: list[ExtraColumn] = []
    for key, name, better in (("acc", acc, high), ("forgetting", "Forgetting", "low")):
        columns += [
            (Column(f"Δ {name} vs {NAIVE} ({u.delta})", better), _diff_cell(key, u)),
            (Column(f"p(Δ {name}) raw (Holm)"), _test_cell(key)),
        ]
    columns += [
        (Column(f"MDE Δ {acc} ({u.delta})"), _mde_cell(u)),
        (Column(f"p({acc}) vs best baseline, raw (Holm)", numeric=False), _best_cell),
    ]
    return columns


def _diff_cell(key: str, u: Units) -> Callable[[pd.Series], Cell]:
    def cell(r: pd.Series) -> Cell:
        if r["label"] == NAIVE:
            return Cell("reference")
        mean, half = r[f"diff_{key}_vs_naive"] * u.scale, r[f"diff_{key}_vs_naive_ci95"] * u.scale
        if not math.isfinite(mean):  # no shared seed with naive, or no naive row
            return Cell(NA)
        return Cell(fmt_signed(mean, u.decimals), fmt_number(half, u.decimals))

    return cell


def _test_cell(key: str) -> Callable[[pd.Series], Cell]:
    def cell(r: pd.Series) -> Cell:
        if r["label"] == NAIVE:
            return Cell("-")
        status = r[f"status_{key}_vs_naive"]
        return Cell(fmt_test(r[f"p_{key}_vs_naive"], r[f"p_{key}_vs_naive_holm"], status))

    return cell


def _mde_cell(u: Units) -> Callable[[pd.Series], Cell]:
    def cell(r: pd.Series) -> Cell:
        if r["label"] == NAIVE:
            return Cell("-")
        return Cell(fmt_number(r["mde_acc_vs_naive"] * u.scale, u.decimals))

    return cell


def _best_cell(r: pd.Series) -> Cell:
    best = r["best_baseline"]
    if not best:
        return Cell("-")
    test = fmt_test(r["p_acc_vs_best"], r["p_acc_vs_best_holm"], r["status_acc_vs_best"])
    return Cell(f"{best}: {test}")


def summary_table(rows: pd.DataFrame, info: ScenarioInfo) -> DisplayTable:
    """The per-scenario table: strategies as rows, metrics ± CI, best values in bold,
    then the paired comparisons with the reference row."""
    u = units_for(info.metric_name)
    specs = summary_specs(info)
    blank = not_applicable(info)
    extra = extra_columns(info)
    columns = [Column("Strategy", numeric=False), Column("n")]
    columns += [Column(s.header, _better(s, info)) for s in specs]
    columns += [column for column, _ in extra]
    body = []
    for _, r in rows.iterrows():
        line = [
            Cell(row_name(r["label"], r["strategy"], r["is_reference"])),
            Cell(str(r["n_seeds"])),
        ]
        line += [Cell(NA) if s.key in blank else _value_cell(r, s, u) for s in specs]
        line += [fill(r) for _, fill in extra]
        body.append(line)
    _mark_best(body, rows, specs, info, u, skip=set(blank))
    references = list(rows.loc[rows["is_reference"], "label"])
    return DisplayTable(
        title=_title(info),
        columns=columns,
        rows=body,
        caption=summary_caption(info, rows, references),
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


def _mark_best(body, rows: pd.DataFrame, specs, info: ScenarioInfo, u: Units, skip=()) -> None:
    """Bold the best displayed value per column (ties too); joint rows and `skip` keys never count."""
    for col, spec in enumerate(specs, start=2):
        if spec.key in skip:
            continue
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


def summary_caption(info: ScenarioInfo, rows: pd.DataFrame, references: list[str]) -> str:
    """Definitions of every column, in plain ASCII so every writer can print it."""
    u = units_for(info.metric_name)
    m = info.metric_name
    n_values = sorted(set(rows["n_seeds"]))
    n = str(n_values[0]) if len(n_values) == 1 else f"{n_values[0]}-{n_values[-1]}"
    shown = "shown in %, differences in percentage points (pp)" if u.level == "%" else f"in {m}"
    if info.higher_is_better:
        forget = "max over l in [j, T-2] of R[l][j] minus R[T-1][j]"
        sign = ""
    else:
        forget = "R[T-1][j] minus min over l in [j, T-2] of R[l][j] (the rise of the loss)"
        sign = " Both are sign-flipped for this lower-is-better metric, so positive means better."
    acc = acc_name(info)
    parts = [
        f"R[i][j] = {m} on experience j after training experience i, T = {info.n_experiences};"
        f" {shown}; n = {n} seed(s) per row.",
        f"{acc}: final average, mean over j of R[T-1][j] (Lopez-Paz & Ranzato 2017).",
        f"Forgetting: Chaudhry et al. (2018) average over j < T-1 of {forget}; positive = worse.",
        "BWT: mean over j < T-1 of R[T-1][j] - R[j][j]; FWT: mean over j >= 1 of"
        f" R[j-1][j] - b[j], b = untrained model (Lopez-Paz & Ranzato 2017).{sign}",
        *[reason + "." for reason in not_applicable(info).values()],
        "Plasticity: mean over j of R[j][j]; read forgetting only beside it (a row that"
        " learned less has less to forget).",
    ]
    if info.joint_label is not None:
        parts.append(
            f"Intransigence: mean over j of {info.joint_label}'s R[T-1][j] (mean over its seeds)"
            " minus R[j][j] (Chaudhry et al. 2018); positive = worse."
        )
    parts += [
        "+/- is the 95% confidence interval half-width over seeds (Student t, n-1 dof),"
        " n/a when n = 1.",
        "Bold: best value per column"
        + (f" ({', '.join(references)} excluded: upper-bound reference)." if references else "."),
        *comparison_caption(info, rows),
    ]
    return " ".join(parts)


def comparison_caption(info: ScenarioInfo, rows: pd.DataFrame) -> list[str]:
    """What the Δ, p and MDE columns mean, the Holm family and its size, and what n can detect."""
    acc = acc_name(info)
    family = int(rows["holm_family_size"].max()) if len(rows) else 0
    has_reference = (rows["label"] == NAIVE).any()
    reference = (
        f"the row labelled {NAIVE} (the lower bound)"
        if has_reference
        else f"the row labelled {NAIVE}, absent here, so no row has a difference or test vs it"
    )
    pairs = sorted({int(k) for k in rows["n_pairs_vs_naive"] if k >= 2} | {3, 5, 10})
    mdes = ", ".join(f"{mde_in_sd(k):.2f} SD at n = {k}" for k in pairs)
    return [
        f"Reference row: {reference}.",
        f"Delta: paired difference row minus {NAIVE} over the seeds both share (mean +/- 95% CI"
        " half-width, Student t over the per-seed differences): the effect size.",
        f"p: two-sided paired t-test on those seeds, raw, then in parentheses Holm-Bonferroni"
        f" adjusted over this table's family: every p-value this table shows (each row vs"
        f" {NAIVE} on {acc} and on forgetting, and each row vs its best other baseline, by mean"
        f" {acc}, on {acc}; a pair shown twice is counted once), {family} test(s).",
        "identical: every paired difference is 0 (p = 1); constant diff: the same non-zero"
        " difference on every seed, zero variance, so the t-test is undefined (not p = 0).",
        f"MDE: the smallest true mean {acc} difference the paired t-test detects with power"
        f" {POWER:g} at two-sided alpha {ALPHA:g}: d(n) times the SD of that row's per-seed"
        f" differences to {NAIVE}, with d(n) = {mdes} (noncentral t); n/a where no t-test ran.",
    ]
