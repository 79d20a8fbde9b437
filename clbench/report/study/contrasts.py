"""The study's planned contrasts: paired tests, one Holm family each, and what they say.

`suites/study/contrasts.toml` declares the contrasts (row vs control) before the run. For
every stream that ran both rows, each contrast is a paired difference by seed (row - control)
of ACC, forgetting and plasticity (clbench.report.stats.paired_diff). ACC and forgetting are
the tests; all primary tests of all streams form one Holm family, the exploratory ones
another. Plasticity is reported, never tested: it decides how the forgetting difference may
be read (docs/study.md):

* |plasticity difference| < tolerance (3 pp): equal plasticity, the forgetting test stands;
* otherwise the row's point against the control's stability-plasticity curve
  (clbench.report.study.frontier), when the control's sweep covers the row's plasticity;
* otherwise "not at equal plasticity": no forgetting claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import tomllib

from clbench.errors import ConfigError
from clbench.report.controls import per_seed
from clbench.report.stats import ALPHA, TOO_FEW, PairedDiff, holm, paired_diff

KINDS = ("primary", "exploratory")
TESTED = ("acc", "forgetting")


@dataclass(frozen=True)
class Contrast:
    name: str
    row: str
    control: str
    kind: str  # "primary" or "exploratory"


@dataclass(frozen=True)
class Spec:
    tolerance: float
    contrasts: tuple[Contrast, ...]


def load_spec(path: str | Path) -> Spec:
    """The contrasts file; a ConfigError names the file and what is wrong."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"contrasts file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML error in contrasts file {path}: {exc}") from None
    unknown = sorted(set(raw) - {"plasticity_tolerance", *KINDS})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; accepted: plasticity_tolerance, primary, exploratory")
    tolerance = raw.get("plasticity_tolerance", 0.03)
    if not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ConfigError(f"{path}: bad plasticity_tolerance {tolerance!r}; accepted: a fraction in (0, 1), e.g. 0.03")
    contrasts = []
    for kind in KINDS:
        for i, entry in enumerate(raw.get(kind, [])):
            if not isinstance(entry, dict) or set(entry) != {"name", "row", "control"}:
                raise ConfigError(f"{path}: {kind}[{i}] needs exactly name, row and control; got {entry!r}")
            contrasts.append(Contrast(entry["name"], entry["row"], entry["control"], kind))
    if not any(c.kind == "primary" for c in contrasts):
        raise ConfigError(f"{path}: no [[primary]] contrast")
    names = [c.name for c in contrasts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{path}: contrast name(s) used twice: {', '.join(twice)}")
    return Spec(float(tolerance), tuple(contrasts))


def contrast_frame(long: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """One row per (contrast, scenario) that has both rows: paired differences of ACC,
    forgetting and plasticity (mean, 95% CI half-width, n, raw p) and the Holm-adjusted p of
    the two tested metrics within the contrast's family."""
    records = []
    for c in spec.contrasts:
        for scenario in dict.fromkeys(long.scenario):
            diffs = {m: paired_diff(per_seed(long, scenario, c.row, m), per_seed(long, scenario, c.control, m))
                     for m in (*TESTED, "plasticity")}
            if not diffs["acc"].n:
                continue  # this stream does not run both rows
            record = {"contrast": c.name, "kind": c.kind, "row": c.row, "control": c.control, "scenario": scenario}
            for metric, d in diffs.items():
                record |= _columns(metric, d)
            records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    for kind in KINDS:
        mask = frame.kind == kind
        tests = frame.loc[mask, [f"{m}_p" for m in TESTED]].to_numpy().ravel()  # one family per kind
        adjusted = holm(tests).reshape(-1, len(TESTED))
        for k, metric in enumerate(TESTED):
            frame.loc[mask, f"{metric}_p_holm"] = adjusted[:, k]
        frame.loc[mask, "family_size"] = int(sum(math.isfinite(p) for p in tests))
    return frame


def _columns(metric: str, d: PairedDiff) -> dict[str, float | int | str]:
    return {f"{metric}_n": d.n, f"{metric}_diff": d.mean, f"{metric}_ci95": d.ci95, f"{metric}_p": d.p,
            f"{metric}_status": d.status}


def significant(p: float) -> bool:
    return math.isfinite(p) and p < ALPHA


def reading(row: pd.Series, tolerance: float, frontier: dict | None) -> str:
    """What the forgetting difference of one (contrast, stream) says, in words.

    `frontier`: the row's point against the control's sweep curve (gap, ci95, p_holm, n), or None."""
    d_plast = row["plasticity_diff"]
    if not math.isfinite(d_plast):
        return "plasticity unknown: forgetting not read"
    if abs(d_plast) < tolerance:
        if row.get("forgetting_status") == TOO_FEW:  # one paired seed: a difference, not a test
            return "equal plasticity: too few paired seeds to test forgetting"
        if significant(row["forgetting_p_holm"]):
            more = "less" if row["forgetting_diff"] < 0 else "more"
            return f"equal plasticity: {row['row']} forgets {more} (by {100 * abs(row['forgetting_diff']):.1f} pp)"
        return "equal plasticity: no forgetting difference detected"
    gap = f"plasticity differs by {100 * d_plast:+.1f} pp"
    if frontier is None:
        return f"not at equal plasticity ({gap}; the control has no stability-plasticity sweep)"
    if not frontier.get("n"):
        return f"not at equal plasticity ({gap}; the control's sweep does not reach the row's plasticity)"
    if frontier["n"] < 2:  # one paired seed is a reading, not a test
        return (f"not at equal plasticity ({gap}; the control's sweep reaches the row's plasticity in only "
                f"{frontier['n']} seed: not tested)")
    if significant(frontier["p_holm"]):
        # The plot's y axis is stability (forgetting, inverted): above the curve = forgets less.
        side = "above (forgets less than)" if frontier["gap"] < 0 else "below (forgets more than)"
        return (f"{gap}; at the row's plasticity it lies {side} the control's sweep curve "
                f"(by {100 * abs(frontier['gap']):.1f} pp)")
    return f"{gap}; at the row's plasticity no difference from the control's sweep curve detected"
