"""Continual-learning metrics computed from one result matrix.

`R[i][j]` is the metric on test experience j after training experience i (T x T),
`b[j]` the untrained model's metric on experience j. Formulas and sources are in
docs/metrics.md.

Sign convention. "Level" metrics (ACC, average incremental accuracy, plasticity)
are reported in the metric's own unit, whatever its direction. "Difference"
metrics are computed on the score S = s * R with s = +1 when higher is better and
s = -1 otherwise, so that for every metric:

* positive BWT / FWT always means "better than the reference",
* positive forgetting / intransigence always means "worse than the reference".

For accuracy these are exactly the published formulas; for a loss such as bits per
character, forgetting is the rise of the loss above its best earlier value.

T = 1 leaves BWT, FWT and forgetting undefined: they are NaN, never an error.
NaN entries in R propagate to every metric that reads them (plain `np.mean` and
`np.max`, never their nan-ignoring variants), so a hole in the data cannot
silently turn into a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NAN = float("nan")

# Scalar metrics produced by `cell_metrics`, in the order reports show them.
SCALAR_METRICS = (
    "acc",
    "forgetting",
    "bwt",
    "fwt",
    "plasticity",
    "avg_inc_acc",
    "intransigence",
    "avalanche_forgetting",
)
# Cost fields copied from result.json (missing ones become NaN).
COST_FIELDS = (
    "wall_seconds",
    "train_seconds",
    "eval_seconds",
    "peak_rss_mb",
    "peak_device_mb",
    "num_params",
    "train_samples_per_s",  # stream samples per second of training (absent in old results: NaN)
)
# Level metrics are in the metric's unit; all others are sign-normalised differences.
LEVEL_METRICS = ("acc", "plasticity", "avg_inc_acc")
# Direction of "better" for difference metrics (levels follow `higher_is_better`).
DIFFERENCE_BETTER_HIGH = {
    "bwt": True,
    "fwt": True,
    "forgetting": False,
    "intransigence": False,
    "avalanche_forgetting": False,
}


def as_matrix(matrix: Sequence[Sequence[float | None]]) -> np.ndarray:
    """A float T x T array; JSON nulls become NaN. Raises ValueError if not square."""
    rows = [[NAN if v is None else float(v) for v in row] for row in matrix]
    arr = np.array(rows, dtype=float)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ValueError(f"matrix must be a non-empty square T x T list, got shape {arr.shape}")
    return arr


def _sign(higher_is_better: bool) -> float:
    return 1.0 if higher_is_better else -1.0


def _clean(x: float) -> float:
    # `-0.0 + 0.0` is `0.0`: keeps the sign flip for losses from printing "-0.00".
    return float(x) + 0.0


def final_average(R: np.ndarray) -> float:
    """ACC: mean over j of R[T-1][j] (Lopez-Paz & Ranzato 2017)."""
    return _clean(np.mean(R[-1]))


def seen_average(R: np.ndarray) -> np.ndarray:
    """A_k for k = 1..T: mean of R[k-1][j] over the experiences seen so far (j <= k-1)."""
    return np.array([np.mean(R[i, : i + 1]) for i in range(R.shape[0])]) + 0.0


def average_incremental(R: np.ndarray) -> float:
    """Mean over i of (mean over j <= i of R[i][j]) (Rebuffi et al. 2017)."""
    return _clean(np.mean(seen_average(R)))


def learning_accuracy(R: np.ndarray) -> float:
    """Plasticity / learning accuracy: mean over j of R[j][j] (Riemer et al. 2019)."""
    return _clean(np.mean(np.diag(R)))


def backward_transfer(R: np.ndarray, higher_is_better: bool = True) -> float:
    """BWT: s/(T-1) * sum over j < T-1 of (R[T-1][j] - R[j][j]) (Lopez-Paz & Ranzato 2017)."""
    if R.shape[0] < 2:
        return NAN
    diffs = R[-1, :-1] - np.diag(R)[:-1]
    return _clean(_sign(higher_is_better) * np.mean(diffs))


def forward_transfer(
    R: np.ndarray, initial: Sequence[float], higher_is_better: bool = True
) -> float:
    """FWT: s/(T-1) * sum over j >= 1 of (R[j-1][j] - b[j]) (Lopez-Paz & Ranzato 2017)."""
    if R.shape[0] < 2:
        return NAN
    b = np.asarray(initial, dtype=float)
    # diagonal(offset=1)[k] = R[k][k+1], i.e. R[j-1][j] for j = k+1 = 1..T-1.
    diffs = np.diagonal(R, offset=1) - b[1:]
    return _clean(_sign(higher_is_better) * np.mean(diffs))


def forgetting_per_experience(R: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Chaudhry et al. (2018) forgetting of each experience j < T-1.

    f_j = max over l in [j, T-2] of S[l][j] - S[T-1][j], with S = s * R: for a loss
    this is R[T-1][j] - min over l of R[l][j], the rise above its best value.
    Returns an array of length T-1 (empty when T = 1).
    """
    S = _sign(higher_is_better) * R
    last = R.shape[0] - 1
    out = [np.max(S[j:last, j]) - S[last, j] for j in range(last)]
    return np.array(out, dtype=float) + 0.0


def average_forgetting(R: np.ndarray, higher_is_better: bool = True) -> float:
    """Mean of `forgetting_per_experience` (Chaudhry et al. 2018, eq. 3 at k = T)."""
    if R.shape[0] < 2:
        return NAN
    return _clean(np.mean(forgetting_per_experience(R, higher_is_better)))


def avalanche_forgetting(R: np.ndarray, higher_is_better: bool = True) -> float:
    """Avalanche's stream forgetting: s * mean over j < T-1 of (R[j][j] - R[T-1][j]).

    Kept for cross-checking only. Because l = j is one of the rows Chaudhry's max
    ranges over, `average_forgetting >= avalanche_forgetting` always, with equality
    when R[j][j] is the best of column j over rows j..T-2. It also equals -BWT.
    """
    if R.shape[0] < 2:
        return NAN
    diffs = np.diag(R)[:-1] - R[-1, :-1]
    return _clean(_sign(higher_is_better) * np.mean(diffs))


def intransigence_per_experience(
    R: np.ndarray, joint_final: Sequence[float], higher_is_better: bool = True
) -> np.ndarray:
    """s * (joint's final metric on j - R[j][j]) for every j (Chaudhry et al. 2018)."""
    joint = np.asarray(joint_final, dtype=float)
    return _sign(higher_is_better) * (joint - np.diag(R)) + 0.0


def intransigence(
    R: np.ndarray, joint_final: Sequence[float] | None, higher_is_better: bool = True
) -> float:
    """Mean intransigence; NaN without a joint reference of the same length T."""
    if joint_final is None or len(joint_final) != R.shape[0]:
        return NAN
    return _clean(np.mean(intransigence_per_experience(R, joint_final, higher_is_better)))


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NAN
    return float(value)


def cell_metrics(result: dict[str, Any], joint_final: Sequence[float] | None = None) -> dict:
    """Every metric of one result.json dict.

    Scalars use the keys in SCALAR_METRICS and COST_FIELDS; vectors are
    `forgetting_per_exp` (length T-1) and `seen_average` (length T, A_k).
    `joint_final` is the joint model's final row for the same scenario (averaged
    over its seeds); without it intransigence is NaN.
    """
    R = as_matrix(result["matrix"])
    T = R.shape[0]
    initial = [NAN if v is None else float(v) for v in result["initial"]]
    if len(initial) != T:
        raise ValueError(f"initial has {len(initial)} values, expected T = {T}")
    hib = bool(result.get("higher_is_better", True))
    out: dict[str, Any] = {
        "acc": final_average(R),
        "forgetting": average_forgetting(R, hib),
        "bwt": backward_transfer(R, hib),
        "fwt": forward_transfer(R, initial, hib),
        "plasticity": learning_accuracy(R),
        "avg_inc_acc": average_incremental(R),
        "intransigence": intransigence(R, joint_final, hib),
        "avalanche_forgetting": avalanche_forgetting(R, hib),
        "forgetting_per_exp": forgetting_per_experience(R, hib).tolist(),
        "seen_average": seen_average(R).tolist(),
    }
    for key in COST_FIELDS:
        out[key] = _number(result.get(key))
    return out
