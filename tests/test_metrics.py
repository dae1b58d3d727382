"""Metrics from summed score histograms agree with scikit-learn on the pooled raw scores.

Every metric computed from a histogram is compared with the same metric computed exactly
on the raw scores, within a tolerance derived from the probability mass of the bins, and
the histogram of pooled rows is checked to be the sum of the histograms of its parts.
"""

from __future__ import annotations

import functools
import json
import operator
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from fedprop.models.metrics import (
    DEFAULT_BINS,
    GlobalMetrics,
    ScoreHistogram,
    gains_points,
    global_metrics,
    roc_points,
)

# --- synthetic data ---------------------------------------------------------------------------


def _logistic_scores(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels from a logistic model (~11% positives) and noisy scores of an imperfect model."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    weights = np.array([1.2, -0.8, 0.6, 0.4, -0.3])
    true_logit = x @ weights - 2.9
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-true_logit))).astype(np.int64)
    fitted = x @ (weights + rng.normal(scale=0.2, size=5)) - 2.75
    scores = 1.0 / (1.0 + np.exp(-(fitted + rng.normal(scale=0.5, size=rows))))
    return scores, labels


def _narrow_scores(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores squeezed into [0.30, 0.33): only about 30 of 1000 bins are used."""
    scores, labels = _logistic_scores(rows, seed)
    return 0.30 + 0.03 * scores, labels


@pytest.fixture(scope="module")
def spread() -> tuple[np.ndarray, np.ndarray]:
    return _logistic_scores(20_000, seed=11)


@pytest.fixture(scope="module")
def narrow() -> tuple[np.ndarray, np.ndarray]:
    return _narrow_scores(20_000, seed=12)


DATASETS = ["spread", "narrow"]


def _data(request: pytest.FixtureRequest, name: str) -> tuple[np.ndarray, np.ndarray]:
    data: tuple[np.ndarray, np.ndarray] = request.getfixturevalue(name)
    return data


# --- exact reference computations on raw scores ----------------------------------------------


def _exact_capture(scores: np.ndarray, labels: np.ndarray, fraction: float) -> float:
    """Capture at the top ``fraction`` of customers on sorted raw scores (fractional last row)."""
    order = np.argsort(-scores, kind="stable")
    ranked = labels[order].astype(np.float64)
    target = fraction * scores.size
    whole = int(np.floor(target))
    captured = float(np.sum(ranked[:whole]))
    if whole < ranked.size:
        captured += (target - whole) * ranked[whole]
    return captured / float(np.sum(labels))


def _cut_bin_positives(h: ScoreHistogram, fraction: float) -> int:
    """Positives in the bin where the top-``fraction`` cut falls (from the top)."""
    counts = (h.positives + h.negatives)[::-1]
    target = fraction * int(np.sum(counts))
    k = int(np.searchsorted(np.cumsum(counts), target, side="left"))
    return int(h.positives[::-1][min(k, counts.size - 1)])


# --- agreement with scikit-learn -------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_auc_within_stated_bound(request: pytest.FixtureRequest, name: str) -> None:
    scores, labels = _data(request, name)
    m = global_metrics(ScoreHistogram.from_scores(scores, labels))
    exact = roc_auc_score(labels, scores)
    assert abs(m.auc - exact) <= m.auc_bin_error_bound + 1e-12
    assert 0.6 < m.auc < 0.95
    if name == "spread":
        assert m.auc_bin_error_bound < 1e-3
    else:
        # ~30 occupied bins: many more within-bin pairs, so a looser (but still stated) bound.
        assert 1e-3 < m.auc_bin_error_bound < 5e-2


def test_auc_bound_is_attained_by_within_bin_order() -> None:
    # In one bin, every positive above every negative: the true AUC is 1 and the histogram
    # counts all pairs as ties; the gap equals the bound.
    scores = np.array([0.51, 0.52, 0.53, 0.54])
    h = ScoreHistogram.from_scores(scores, np.array([0, 0, 1, 1]), bins=10)
    m = global_metrics(h)
    assert m.auc == 0.5
    assert m.auc_bin_error_bound == 0.5


@pytest.mark.parametrize("name", DATASETS)
def test_ks_within_one_bin_of_roc_curve(request: pytest.FixtureRequest, name: str) -> None:
    scores, labels = _data(request, name)
    h = ScoreHistogram.from_scores(scores, labels)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    exact = float(tpr[best] - fpr[best])
    p, n = int(np.sum(h.positives)), int(np.sum(h.negatives))
    # Moving the best raw threshold to the nearest edge of its bin b shifts TPR by at most
    # pos_b/P and FPR by at most neg_b/N, in the same direction; every bin edge is also a raw
    # threshold, so the histogram's KS cannot exceed the exact one.
    b = min(int(np.floor(thresholds[best] * DEFAULT_BINS)), DEFAULT_BINS - 1)
    one_bin = max(h.positives[b] / p, h.negatives[b] / n)
    ks = global_metrics(h).ks
    assert exact - one_bin - 1e-12 <= ks <= exact + 1e-12
    assert one_bin < (0.005 if name == "spread" else 0.1)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("fraction", [0.1, 0.2])
def test_capture_and_lift_against_sorted_scores(
    request: pytest.FixtureRequest, name: str, fraction: float
) -> None:
    scores, labels = _data(request, name)
    h = ScoreHistogram.from_scores(scores, labels)
    m = global_metrics(h)
    capture, lift = (m.capture_10, m.lift_10) if fraction == 0.1 else (m.capture_20, m.lift_20)
    exact = _exact_capture(scores, labels, fraction)
    # Bins above the cut are taken whole by both; in the cut bin both take the same number of
    # rows, so they differ by at most that bin's positives.
    tolerance = _cut_bin_positives(h, fraction) / int(np.sum(labels)) + 1e-12
    assert abs(capture - exact) <= tolerance
    assert abs(lift - exact / fraction) <= tolerance / fraction
    assert lift == pytest.approx(capture / fraction)
    if name == "spread":
        assert tolerance < 0.01


@pytest.mark.parametrize("name", DATASETS)
def test_calibration_matches_uniform_calibration_curve(
    request: pytest.FixtureRequest, name: str
) -> None:
    scores, labels = _data(request, name)
    h = ScoreHistogram.from_scores(scores, labels)
    m = global_metrics(h, calibration_bins=10)
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    groups = np.searchsorted(np.linspace(0.0, 1.0, 11)[1:-1], scores)
    counts = np.bincount(groups, minlength=10)
    counts = counts[counts > 0]
    assert len(m.calibration) == prob_true.size
    np.testing.assert_allclose([c.observed_rate for c in m.calibration], prob_true, rtol=1e-12)
    np.testing.assert_array_equal([c.count for c in m.calibration], counts)
    # Fine-bin centres stand in for the raw scores: off by at most half a fine bin.
    half_bin = 0.5 / DEFAULT_BINS
    np.testing.assert_allclose([c.mean_score for c in m.calibration], prob_pred, atol=half_bin)
    for c in m.calibration:
        assert c.score_high == pytest.approx(c.score_low + 0.1)
        assert c.score_low <= c.mean_score <= c.score_high
    exact_ece = float(np.sum(counts * np.abs(prob_pred - prob_true)) / scores.size)
    assert abs(m.ece - exact_ece) <= half_bin


def test_calibration_groups_follow_fine_bins_when_they_do_not_divide() -> None:
    scores = np.linspace(0.0, 1.0, 301)
    labels = (np.arange(301) % 3 == 0).astype(np.int64)
    m = global_metrics(ScoreHistogram.from_scores(scores, labels, bins=7), calibration_bins=3)
    assert sum(c.count for c in m.calibration) == 301
    edges = [(c.score_low, c.score_high) for c in m.calibration]
    assert edges == [(0.0, 2 / 7), (2 / 7, 5 / 7), (5 / 7, 1.0)]


@pytest.mark.parametrize("name", DATASETS)
def test_log_loss_matches_sklearn(request: pytest.FixtureRequest, name: str) -> None:
    scores, labels = _data(request, name)
    m = global_metrics(ScoreHistogram.from_scores(scores, labels))
    assert m.log_loss == pytest.approx(log_loss(labels, y_proba=scores), rel=1e-12)


def test_log_loss_clips_certain_mistakes() -> None:
    scores = np.array([0.0, 1.0, 0.5, 0.5])
    labels = np.array([1, 0, 0, 1])
    m = global_metrics(ScoreHistogram.from_scores(scores, labels))
    assert np.isfinite(m.log_loss)
    assert m.log_loss == pytest.approx(log_loss(labels, y_proba=scores), rel=1e-12)


# --- hand-checked values and curves ----------------------------------------------------------


def test_small_example_by_hand() -> None:
    h = ScoreHistogram.from_scores(np.array([0.1, 0.3, 0.6, 0.9]), np.array([0, 1, 0, 1]), bins=4)
    np.testing.assert_array_equal(h.positives, [0, 1, 0, 1])
    np.testing.assert_array_equal(h.negatives, [1, 0, 1, 0])
    m = global_metrics(h)
    assert m.auc == 0.75 and m.auc_bin_error_bound == 0.0
    assert m.ks == 0.5
    # 10% of 4 customers = 0.4 of the top bin's single positive.
    assert m.capture_10 == pytest.approx(0.2) and m.lift_10 == pytest.approx(2.0)
    assert m.capture_20 == pytest.approx(0.4) and m.lift_20 == pytest.approx(2.0)
    assert (m.positives, m.negatives, m.base_rate) == (2, 2, 0.5)
    expected_roc = np.array([[0, 0], [0, 0.5], [0.5, 0.5], [0.5, 1], [1, 1]])
    np.testing.assert_array_equal(roc_points(h), expected_roc)
    expected_gains = np.array([[0, 0], [0.25, 0.5], [0.5, 0.5], [0.75, 1], [1, 1]])
    np.testing.assert_array_equal(gains_points(h), expected_gains)


def test_bin_edges_and_score_one() -> None:
    h = ScoreHistogram.from_scores(np.array([0.0, 0.5, 1.0, 0.4999]), np.array([0, 1, 1, 0]), 2)
    np.testing.assert_array_equal(h.positives, [0, 2])
    np.testing.assert_array_equal(h.negatives, [2, 0])
    assert h.bins == 2


def test_curves_run_from_origin_to_one(spread: tuple[np.ndarray, np.ndarray]) -> None:
    h = ScoreHistogram.from_scores(*spread)
    for curve in (roc_points(h), gains_points(h)):
        assert curve.shape == (DEFAULT_BINS + 1, 2)
        np.testing.assert_array_equal(curve[0], [0.0, 0.0])
        np.testing.assert_allclose(curve[-1], [1.0, 1.0])
        assert np.all(np.diff(curve, axis=0) >= 0)
    # The gains curve interpolated at q is the capture at q.
    gains = gains_points(h)
    m = global_metrics(h)
    assert np.interp(0.1, gains[:, 0], gains[:, 1]) == pytest.approx(m.capture_10, abs=1e-12)
    assert np.interp(0.2, gains[:, 0], gains[:, 1]) == pytest.approx(m.capture_20, abs=1e-12)


# --- additivity across banks and the vector layout -------------------------------------------


def _split(rows: int, parts: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(rows)
    cuts = np.sort(np.random.default_rng(seed + 1).choice(np.arange(1, rows), parts - 1, False))
    return np.split(order, cuts)


@pytest.mark.parametrize("name", DATASETS)
def test_histograms_of_parts_sum_to_pooled(request: pytest.FixtureRequest, name: str) -> None:
    scores, labels = _data(request, name)
    pooled = ScoreHistogram.from_scores(scores, labels)
    parts = [ScoreHistogram.from_scores(scores[i], labels[i]) for i in _split(scores.size, 4, 3)]
    summed = functools.reduce(operator.add, parts)
    np.testing.assert_array_equal(summed.positives, pooled.positives)
    np.testing.assert_array_equal(summed.negatives, pooled.negatives)
    assert summed.loss_sum == pytest.approx(pooled.loss_sum, rel=1e-12)
    # The same sum taken over flat vectors, as an aggregator would.
    vector_sum = np.sum([p.to_vector() for p in parts], axis=0)
    assert ScoreHistogram.from_vector(vector_sum, DEFAULT_BINS) == ScoreHistogram(
        summed.positives, summed.negatives, float(vector_sum[-1])
    )
    from_pooled, from_parts = global_metrics(pooled), global_metrics(summed)
    assert from_parts.log_loss == pytest.approx(from_pooled.log_loss, rel=1e-12)
    assert replace(from_parts, log_loss=0.0) == replace(from_pooled, log_loss=0.0)


def test_vector_layout_and_round_trip(spread: tuple[np.ndarray, np.ndarray]) -> None:
    h = ScoreHistogram.from_scores(*spread, bins=50)
    v = h.to_vector()
    assert v.shape == (101,) and v.dtype == np.float64
    assert np.all(v >= 0)
    np.testing.assert_array_equal(v[:50], h.positives)
    np.testing.assert_array_equal(v[50:100], h.negatives)
    assert v[100] == h.loss_sum
    back = ScoreHistogram.from_vector(v, 50)
    assert back == h
    assert back.positives.dtype == np.int64 and back.negatives.dtype == np.int64
    assert ScoreHistogram.from_vector(v.astype(np.int64), 50).loss_sum == int(h.loss_sum)


def test_histogram_is_immutable() -> None:
    h = ScoreHistogram.from_scores(np.array([0.2, 0.7]), np.array([0, 1]), bins=4)
    with pytest.raises(ValueError):
        h.positives[0] = 5
    with pytest.raises(FrozenInstanceError):
        h.loss_sum = 1.0  # type: ignore[misc]
    source = np.array([1, 2])
    kept = ScoreHistogram(source, np.array([0, 0]))
    source[0] = 9
    assert kept.positives[0] == 1


def test_to_dict_is_json_ready(spread: tuple[np.ndarray, np.ndarray]) -> None:
    m = global_metrics(ScoreHistogram.from_scores(*spread))
    d = json.loads(json.dumps(m.to_dict()))
    assert d["auc"] == m.auc and d["positives"] == m.positives
    assert len(d["calibration"]) == len(m.calibration)
    assert set(d) == set(GlobalMetrics.__dataclass_fields__)


# --- randomised properties (seeded) ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_properties_on_random_small_data(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    rows = int(rng.integers(2, 300))
    bins = int(rng.integers(1, 60))
    labels = rng.integers(0, 2, rows)
    labels[:2] = [0, 1]
    # Mix continuous scores with heavy ties and exact edges.
    scores = np.where(
        rng.random(rows) < 0.5, rng.random(rows), rng.integers(0, 5, rows) / 4
    ).astype(np.float64)
    h = ScoreHistogram.from_scores(scores, labels, bins)
    m = global_metrics(h, calibration_bins=min(bins, 10))
    assert abs(m.auc - roc_auc_score(labels, scores)) <= m.auc_bin_error_bound + 1e-12
    assert 0.0 <= m.ks <= 1.0
    assert 0.0 <= m.capture_10 <= m.capture_20 <= 1.0
    assert m.ece >= 0.0 and sum(c.count for c in m.calibration) == rows
    assert m.log_loss == pytest.approx(log_loss(labels, y_proba=scores), rel=1e-9)
    index = _split(rows, 3, seed) if rows >= 3 else [np.arange(rows)]
    summed = functools.reduce(
        operator.add, [ScoreHistogram.from_scores(scores[i], labels[i], bins) for i in index]
    )
    np.testing.assert_array_equal(summed.positives, h.positives)
    np.testing.assert_array_equal(summed.negatives, h.negatives)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "labels", "bins", "match"),
    [
        ([0.2, 1.2], [0, 1], 10, r"\[0, 1\]"),
        ([-0.1, 0.5], [0, 1], 10, r"\[0, 1\]"),
        ([0.2, np.nan], [0, 1], 10, "NaN"),
        ([0.2, 0.3], [0, 2], 10, "0 or 1"),
        ([0.2, 0.3], [0, 0.5], 10, "0 or 1"),
        ([0.2, 0.3, 0.4], [0, 1], 10, "differ in length"),
        ([[0.2, 0.3]], [[0, 1]], 10, "1-D"),
        ([0.2, 0.3], [0, 1], 0, "bins"),
    ],
)
def test_bad_scores_are_refused(
    scores: list[float], labels: list[float], bins: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ScoreHistogram.from_scores(np.array(scores), np.array(labels), bins)


def test_undefined_metrics_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        global_metrics(ScoreHistogram.from_scores(np.array([]), np.array([]), bins=5))
    with pytest.raises(ValueError, match="no positives"):
        global_metrics(ScoreHistogram.from_scores(np.array([0.1, 0.9]), np.array([0, 0])))
    with pytest.raises(ValueError, match="no negatives"):
        global_metrics(ScoreHistogram.from_scores(np.array([0.1, 0.9]), np.array([1, 1])))
    h = ScoreHistogram.from_scores(np.array([0.1, 0.9]), np.array([0, 1]), bins=5)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="calibration_bins"):
            global_metrics(h, calibration_bins=bad)


def test_bad_histograms_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ScoreHistogram(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="negative count"):
        ScoreHistogram(np.array([1, -2]), np.array([1, 0]))
    with pytest.raises(ValueError, match="loss_sum"):
        ScoreHistogram(np.array([1]), np.array([1]), float("nan"))
    with pytest.raises(ValueError, match="at least one bin"):
        ScoreHistogram(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="cannot add"):
        _ = ScoreHistogram(np.array([1]), np.array([1])) + ScoreHistogram(
            np.array([1, 0]), np.array([1, 0])
        )
    with pytest.raises(ValueError, match="length 7"):
        ScoreHistogram.from_vector(np.zeros(6), bins=3)
    with pytest.raises(ValueError, match="whole numbers"):
        ScoreHistogram.from_vector(np.array([0.5, 0, 0, 0, 0, 0, 0]), bins=3)
    with pytest.raises(ValueError, match="negative"):
        ScoreHistogram.from_vector(np.array([-1.0, 0, 0, 0, 0, 0, 0]), bins=3)
    with pytest.raises(ValueError, match="NaN"):
        ScoreHistogram.from_vector(np.array([np.nan, 0, 0, 0, 0, 0, 0]), bins=3)
