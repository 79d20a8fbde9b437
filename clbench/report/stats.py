"""The statistics behind every comparison in a report (definitions: docs/metrics.md).

* `paired_diff(a, b)`: the paired difference a - b over the seeds both share, with
  its 95% CI (Student t over the per-seed differences) and the two-sided paired
  t-test p-value. A p-value alone says nothing about size; the CI does.
* `holm(p_values)`: Holm-Bonferroni adjusted p-values of one family of tests
  (statsmodels), because a table of 29 tests at 0.05 finds "something" by chance.
* `mde_in_sd(n)`: the smallest true mean difference the paired t-test detects with
  power 0.8 at two-sided alpha 0.05 with n pairs, in units of the SD of the paired
  differences; with 3 seeds it is about 3 SD, which readers should see.

Zero variance: when every paired difference is the same value the t statistic is
undefined (0/0 or x/0). All zero is "identical" (p = 1: no evidence of a
difference); a constant non-zero difference is "constant" and gets p = NaN, since
the test has no noise estimate to weigh it against. Neither ever prints p = 0.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

ALPHA = 0.05
POWER = 0.8
# Differences within this (relative to the values' size) count as equal: a constant
# shift computed in floats can differ by 1e-16 between seeds and then give p ~ 1e-15.
RELATIVE_TOLERANCE = 1e-12

OK = "ok"
IDENTICAL = "identical"
CONSTANT = "constant"
TOO_FEW = "too few"  # fewer than two shared seeds, or a NaN among them


@dataclass(frozen=True)
class PairedDiff:
    n: int  # seeds both rows have
    mean: float  # mean over those seeds of a - b
    ci95: float  # half-width of the 95% CI of that mean (Student t, n - 1 dof)
    sd: float  # sample SD (ddof = 1) of the per-seed differences
    p: float  # two-sided paired t-test; 1 when identical, NaN when constant or too few
    status: str  # OK, IDENTICAL, CONSTANT or TOO_FEW


def paired_diff(a: dict[int, float], b: dict[int, float]) -> PairedDiff:
    """a - b on the seeds present in both (dicts seed -> value)."""
    seeds = sorted(set(a) & set(b))
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = int(diffs.size)
    if n == 0 or np.isnan(diffs).any():
        return PairedDiff(n, math.nan, math.nan, math.nan, math.nan, TOO_FEW)
    mean = float(diffs.mean())
    if n < 2:
        return PairedDiff(n, mean, math.nan, math.nan, math.nan, TOO_FEW)
    scale = max(1.0, *(abs(a[s]) for s in seeds), *(abs(b[s]) for s in seeds))
    tol = RELATIVE_TOLERANCE * scale
    if np.ptp(diffs) <= tol:
        if np.abs(diffs).max() <= tol:
            return PairedDiff(n, 0.0, 0.0, 0.0, 1.0, IDENTICAL)
        return PairedDiff(n, mean, 0.0, 0.0, math.nan, CONSTANT)
    sd = float(diffs.std(ddof=1))
    se = sd / math.sqrt(n)
    # Same statistic as scipy.stats.ttest_rel, without its per-call overhead
    # (reports run hundreds of these).
    p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    return PairedDiff(n, mean, t_975(n - 1) * se, sd, p, OK)


@functools.cache
def t_975(dof: int) -> float:
    """Student t quantile for a two-sided 95% CI; cached, since scipy's ppf is slow per call."""
    return float(stats.t.ppf(0.975, dof))


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values; NaN entries stay NaN and are not in the family."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], alpha=ALPHA, method="holm")[1]
    return out


@functools.cache
def mde_in_sd(n: int) -> float:
    """Minimum detectable mean paired difference, in SDs of the differences (NaN for n < 2).

    The paired t-test is a one-sample t-test on the differences, so this is the
    effect size d solving power(d, n) = 0.8 for the noncentral t with n - 1 dof.
    """
    if n < 2:
        return math.nan
    d = TTestPower().solve_power(
        effect_size=None, nobs=n, alpha=ALPHA, power=POWER, alternative="two-sided"
    )
    return float(np.asarray(d).item())
