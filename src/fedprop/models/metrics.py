"""Global evaluation metrics of a propensity model, computed from summed score histograms.

No bank reveals its scores or its own metrics. Each bank bins its scores into ``bins``
equal-width bins on ``[0, 1]`` and counts the positives and the negatives in every bin
(a :class:`ScoreHistogram`). The histograms of all banks are summed, element by element,
as flat vectors of non-negative integers (:meth:`ScoreHistogram.to_vector`), so the sum
can be taken under additive homomorphic encryption. The global metrics are then computed
from the summed histogram alone (:func:`global_metrics`); they are never averages of
per-bank metrics.

Metrics computed from a histogram:

* AUC, counting a positive and a negative in the same bin as a tie (1/2). It differs
  from the AUC of the raw scores by at most :attr:`GlobalMetrics.auc_bin_error_bound`.
* KS, the largest gap between the true and the false positive rates over the bin edges.
* Capture rate and lift at the top 10% and 20% of all scored customers, interpolating
  linearly inside the bin where the cut falls.
* Calibration over coarse equal-width score ranges, and the expected calibration error.
* Mean log loss, from the per-row loss summed alongside the counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_BINS",
    "CalibrationBin",
    "GlobalMetrics",
    "ScoreHistogram",
    "gains_points",
    "global_metrics",
    "roc_points",
]

DEFAULT_BINS = 1000
"""Number of equal-width score bins on ``[0, 1]`` unless a job says otherwise."""

_MAX_EXACT_COUNT = 2**53
"""Largest count that a float64 vector element holds exactly."""

_TOP_FRACTIONS = (0.1, 0.2)


def _as_counts(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a read-only 1-D int64 array of non-negative whole numbers."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    elif array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinity")
        if not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold whole numbers")
        if array.size and np.max(np.abs(array)) > _MAX_EXACT_COUNT:
            raise ValueError(f"{name} holds a count larger than 2**53")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer counts, got dtype {array.dtype}")
    counts = array.astype(np.int64)  # always a copy: the histogram owns its arrays
    if counts.size and int(np.min(counts)) < 0:
        raise ValueError(f"{name} contains a negative count")
    counts.setflags(write=False)
    return counts


@dataclass(frozen=True, eq=False)
class ScoreHistogram:
    """Counts of positives and negatives in equal-width score bins on ``[0, 1]``.

    Bin ``b`` of ``bins`` holds scores ``s`` with ``b / bins <= s < (b + 1) / bins``; a
    score of exactly 1.0 is in the last bin. ``loss_sum`` is the sum over rows of the
    log loss (natural log), so that the mean log loss of pooled rows is the sum of the
    banks' ``loss_sum`` divided by the total count. Histograms of the same number of bins
    add up with ``+``. The count arrays are stored as read-only int64 copies.
    """

    positives: np.ndarray
    negatives: np.ndarray
    loss_sum: float = 0.0

    def __post_init__(self) -> None:
        positives = _as_counts(self.positives, "positives")
        negatives = _as_counts(self.negatives, "negatives")
        if positives.shape != negatives.shape:
            raise ValueError(
                f"positives and negatives differ in length: {positives.size} vs {negatives.size}"
            )
        if positives.size == 0:
            raise ValueError("a score histogram needs at least one bin")
        loss_sum = float(self.loss_sum)
        if not np.isfinite(loss_sum) or loss_sum < 0:
            raise ValueError(f"loss_sum must be finite and non-negative, got {self.loss_sum}")
        object.__setattr__(self, "positives", positives)
        object.__setattr__(self, "negatives", negatives)
        object.__setattr__(self, "loss_sum", loss_sum)

    @classmethod
    def from_scores(
        cls, scores: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS
    ) -> ScoreHistogram:
        """Histogram of ``scores`` (probabilities in ``[0, 1]``) by ``labels`` (0 or 1).

        ``loss_sum`` is the rows' summed log loss, with scores clipped to
        ``[eps, 1 - eps]`` (``eps`` the float64 machine epsilon) as scikit-learn does.
        No rows give an all-zero histogram.
        """
        if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        bins = int(bins)
        s = np.asarray(scores)
        y = np.asarray(labels)
        if s.ndim != 1 or y.ndim != 1:
            raise ValueError(
                f"scores and labels must be 1-D arrays, got shapes {s.shape} and {y.shape}"
            )
        if s.shape != y.shape:
            raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
        if s.dtype.kind not in "iuf":
            raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
        s = s.astype(np.float64)
        if np.any(np.isnan(s)):
            raise ValueError("scores contain NaN")
        if s.size and (float(np.min(s)) < 0.0 or float(np.max(s)) > 1.0):
            raise ValueError(f"scores must lie in [0, 1], got range [{np.min(s)}, {np.max(s)}]")
        if y.dtype.kind not in "biuf":
            raise ValueError(f"labels must be 0 or 1, got dtype {y.dtype}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0 or 1")
        is_positive = y == 1
        index = np.minimum(np.floor(s * bins).astype(np.int64), bins - 1)
        positives = np.bincount(index[is_positive], minlength=bins)
        negatives = np.bincount(index[~is_positive], minlength=bins)
        eps = float(np.finfo(np.float64).eps)
        p = np.clip(s, eps, 1.0 - eps)
        q = np.clip(1.0 - s, eps, 1.0 - eps)
        loss_sum = -float(np.sum(np.log(p[is_positive])) + np.sum(np.log(q[~is_positive])))
        return cls(positives, negatives, max(loss_sum, 0.0))

    @property
    def bins(self) -> int:
        """Number of score bins."""
        return int(self.positives.size)

    def __add__(self, other: ScoreHistogram) -> ScoreHistogram:
        """The histogram of the rows of both (the bins must agree)."""
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        if other.bins != self.bins:
            raise ValueError(f"cannot add histograms of {self.bins} and {other.bins} bins")
        return ScoreHistogram(
            self.positives + other.positives,
            self.negatives + other.negatives,
            self.loss_sum + other.loss_sum,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        return (
            np.array_equal(self.positives, other.positives)
            and np.array_equal(self.negatives, other.negatives)
            and self.loss_sum == other.loss_sum
        )

    def to_vector(self) -> np.ndarray:
        """This histogram as one flat float64 vector of length ``2 * bins + 1``.

        Layout: ``[positives[0], ..., positives[bins - 1], negatives[0], ...,
        negatives[bins - 1], loss_sum]``. Every element is non-negative and the counts
        are whole numbers, so vectors from several banks sum element-wise to the vector
        of the summed histogram. Counts are exact up to 2**53.
        """
        if self.bins and max(int(np.max(self.positives)), int(np.max(self.negatives))) > (
            _MAX_EXACT_COUNT
        ):
            raise ValueError("a count exceeds 2**53 and cannot be held exactly in float64")
        return np.concatenate(
            [
                self.positives.astype(np.float64),
                self.negatives.astype(np.float64),
                np.array([self.loss_sum], dtype=np.float64),
            ]
        )

    @classmethod
    def from_vector(cls, vector: np.ndarray, bins: int) -> ScoreHistogram:
        """The histogram laid out in ``vector`` by :meth:`to_vector`."""
        if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        bins = int(bins)
        v = np.asarray(vector)
        if v.ndim != 1 or v.size != 2 * bins + 1:
            raise ValueError(
                f"a histogram vector of {bins} bins has length {2 * bins + 1}, got shape {v.shape}"
            )
        if v.dtype.kind not in "iuf":
            raise ValueError(f"a histogram vector must be numeric, got dtype {v.dtype}")
        v = v.astype(np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError("a histogram vector contains NaN or infinity")
        return cls(v[:bins], v[bins : 2 * bins], float(v[-1]))


@dataclass(frozen=True)
class CalibrationBin:
    """Predicted and observed positive rates of the rows whose scores fall in one range."""

    score_low: float
    score_high: float
    mean_score: float
    observed_rate: float
    count: int


@dataclass(frozen=True)
class GlobalMetrics:
    """Metrics of a model on the rows of a (summed) score histogram.

    ``lift_q`` and ``capture_q`` are for the top 10% and 20% of all customers ranked by
    descending score. ``ece`` is the expected calibration error over ``calibration``.
    ``auc_bin_error_bound`` bounds ``|auc - exact AUC of the raw scores|``.
    """

    auc: float
    ks: float
    lift_10: float
    capture_10: float
    lift_20: float
    capture_20: float
    positives: int
    negatives: int
    base_rate: float
    log_loss: float
    calibration: tuple[CalibrationBin, ...]
    ece: float
    auc_bin_error_bound: float

    def to_dict(self) -> dict[str, object]:
        """These metrics as plain JSON-ready values (``calibration`` as a list of dicts)."""
        return {
            "auc": self.auc,
            "ks": self.ks,
            "lift_10": self.lift_10,
            "capture_10": self.capture_10,
            "lift_20": self.lift_20,
            "capture_20": self.capture_20,
            "positives": self.positives,
            "negatives": self.negatives,
            "base_rate": self.base_rate,
            "log_loss": self.log_loss,
            "calibration": [
                {
                    "score_low": c.score_low,
                    "score_high": c.score_high,
                    "mean_score": c.mean_score,
                    "observed_rate": c.observed_rate,
                    "count": c.count,
                }
                for c in self.calibration
            ],
            "ece": self.ece,
            "auc_bin_error_bound": self.auc_bin_error_bound,
        }


def _totals(h: ScoreHistogram) -> tuple[int, int]:
    """(positives, negatives) of ``h``; a ValueError unless both are present."""
    p = int(np.sum(h.positives))
    n = int(np.sum(h.negatives))
    if p + n == 0:
        raise ValueError("the score histogram is empty: no rows to evaluate")
    if p == 0:
        raise ValueError("the score histogram has no positives: AUC and capture are undefined")
    if n == 0:
        raise ValueError("the score histogram has no negatives: AUC and FPR are undefined")
    return p, n


def _cumulative_from_top(counts: np.ndarray) -> np.ndarray:
    """Counts in or above each bin edge, from the top edge (0) down to the bottom (all)."""
    descending = counts[::-1].astype(np.float64)
    return np.concatenate([[0.0], np.cumsum(descending)])


def roc_points(h: ScoreHistogram) -> np.ndarray:
    """ROC curve as a ``(bins + 1, 2)`` array of ``(fpr, tpr)``.

    One point per bin edge, by descending threshold: the first is ``(0, 0)`` (threshold
    above 1) and the last ``(1, 1)`` (threshold 0).
    """
    p, n = _totals(h)
    tpr = _cumulative_from_top(h.positives) / p
    fpr = _cumulative_from_top(h.negatives) / n
    return np.column_stack([fpr, tpr])


def gains_points(h: ScoreHistogram) -> np.ndarray:
    """Cumulative gains curve as a ``(bins + 1, 2)`` array.

    Each row is ``(fraction of all customers targeted, fraction of positives captured)``
    when targeting every customer scored at or above a bin edge, by descending edge,
    from ``(0, 0)`` to ``(1, 1)``.
    """
    p, n = _totals(h)
    targeted = _cumulative_from_top(h.positives + h.negatives) / (p + n)
    captured = _cumulative_from_top(h.positives) / p
    return np.column_stack([targeted, captured])


def _capture_at(h: ScoreHistogram, fraction: float) -> float:
    """Fraction of positives among the top ``fraction`` of customers by descending score.

    Where the cut falls inside a bin, that bin's customers are taken proportionally.
    """
    p, n = _totals(h)
    counts = (h.positives + h.negatives)[::-1].astype(np.float64)
    positives = h.positives[::-1].astype(np.float64)
    cum_counts = np.concatenate([[0.0], np.cumsum(counts)])
    cum_positives = np.concatenate([[0.0], np.cumsum(positives)])
    target = fraction * (p + n)
    # First bin (from the top) whose upper cumulative count reaches the target.
    k = int(np.searchsorted(cum_counts[1:], target, side="left"))
    k = min(k, counts.size - 1)
    taken = (target - cum_counts[k]) / counts[k] if counts[k] > 0 else 0.0
    taken = min(max(taken, 0.0), 1.0)
    return float((cum_positives[k] + taken * positives[k]) / p)


def _calibration(h: ScoreHistogram, groups: int) -> tuple[tuple[CalibrationBin, ...], float]:
    """Calibration over ``groups`` equal-width score ranges, and the expected calibration error.

    Each fine bin joins the range holding its centre, so a range's reported bounds are the
    outer edges of its fine bins (exactly ``g / groups`` when ``groups`` divides ``bins``).
    """
    bins = h.bins
    centres = (np.arange(bins, dtype=np.float64) + 0.5) / bins
    group = np.minimum(np.floor(centres * groups).astype(np.int64), groups - 1)
    counts = (h.positives + h.negatives).astype(np.float64)
    group_counts = np.bincount(group, weights=counts, minlength=groups)
    group_positives = np.bincount(group, weights=h.positives.astype(np.float64), minlength=groups)
    group_score = np.bincount(group, weights=counts * centres, minlength=groups)
    total = float(np.sum(counts))
    result: list[CalibrationBin] = []
    error = 0.0
    for g in range(groups):
        members = np.flatnonzero(group == g)
        if members.size == 0 or group_counts[g] == 0:
            continue
        mean_score = float(group_score[g] / group_counts[g])
        observed = float(group_positives[g] / group_counts[g])
        error += float(group_counts[g]) * abs(mean_score - observed)
        result.append(
            CalibrationBin(
                score_low=float(members[0]) / bins,
                score_high=float(members[-1] + 1) / bins,
                mean_score=mean_score,
                observed_rate=observed,
                count=int(np.sum(h.positives[members]) + np.sum(h.negatives[members])),
            )
        )
    return tuple(result), error / total


def global_metrics(h: ScoreHistogram, calibration_bins: int = 10) -> GlobalMetrics:
    """All global metrics of the rows counted in ``h`` (typically the sum over banks).

    Raises ValueError when ``h`` is empty or lacks positives or negatives, or when
    ``calibration_bins`` is not a positive integer. With more calibration ranges than
    fine bins, the ranges holding no fine-bin centre are omitted.
    """
    if (
        isinstance(calibration_bins, bool)
        or not isinstance(calibration_bins, int | np.integer)
        or calibration_bins < 1
    ):
        raise ValueError(f"calibration_bins must be a positive integer, got {calibration_bins!r}")
    p, n = _totals(h)
    pos = h.positives.astype(np.float64)
    neg = h.negatives.astype(np.float64)
    pairs = float(p) * float(n)
    # Positives strictly above each bin, scanning from the top bin down.
    above = np.concatenate([np.cumsum(pos[::-1])[::-1][1:], [0.0]])
    auc = float(np.sum(neg * (above + 0.5 * pos)) / pairs)
    auc_bound = float(0.5 * np.sum(pos * neg) / pairs)
    roc = roc_points(h)
    ks = float(np.max(np.abs(roc[:, 1] - roc[:, 0])))
    capture_10, capture_20 = (_capture_at(h, q) for q in _TOP_FRACTIONS)
    calibration, ece = _calibration(h, int(calibration_bins))
    return GlobalMetrics(
        auc=auc,
        ks=ks,
        lift_10=capture_10 / _TOP_FRACTIONS[0],
        capture_10=capture_10,
        lift_20=capture_20 / _TOP_FRACTIONS[1],
        capture_20=capture_20,
        positives=p,
        negatives=n,
        base_rate=p / (p + n),
        log_loss=h.loss_sum / (p + n),
        calibration=calibration,
        ece=ece,
        auc_bin_error_bound=auc_bound,
    )
