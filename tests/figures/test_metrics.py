"""Metrics against hand arithmetic, scikit-learn, and the bootstrap's promised behaviour."""

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pneumo_fastai.figures import metrics
from pneumo_fastai.figures.metrics import (
    COUNT_NAMES,
    HEADLINE_METRICS,
    RATE_NAMES,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    confusion,
    expected_calibration_error,
    reliability_curve,
    summarize,
)


def _known_case() -> tuple[np.ndarray, np.ndarray]:
    """tn=50, fp=10, fn=5, tp=35 at threshold 0.5, with scores 0.1 and 0.9 only."""
    y = np.array([0] * 50 + [0] * 10 + [1] * 5 + [1] * 35)
    p = np.array([0.1] * 50 + [0.9] * 10 + [0.1] * 5 + [0.9] * 35)
    return y, p


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # rounding makes ties
    return y, p


def test_known_confusion_matrix_gives_hand_computed_metrics():
    y, p = _known_case()
    m = binary_metrics(y, p)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (50, 10, 5, 35)
    assert (m["support_normal"], m["support_pneumonia"]) == (60, 40)
    expected = {
        "accuracy": 85 / 100,
        "sensitivity": 35 / 40,
        "recall_pneumonia": 35 / 40,
        "specificity": 50 / 60,
        "recall_normal": 50 / 60,
        "balanced_accuracy": (35 / 40 + 50 / 60) / 2,
        "ppv": 35 / 45,
        "precision_pneumonia": 35 / 45,
        "npv": 50 / 55,
        "precision_normal": 50 / 55,
        "f1_pneumonia": 70 / 85,
        "f1_normal": 100 / 115,
        # pairs: 35*50 wins, 35*10 + 5*50 ties at half, of 40*60
        "roc_auc": (35 * 50 + (35 * 10 + 5 * 50) / 2) / (40 * 60),
        # thresholds 0.9 then 0.1: recall steps 35/40 and 5/40 at precision 35/45 and 40/100
        "average_precision": 35 / 40 * 35 / 45 + 5 / 40 * 40 / 100,
        # 85 right at squared error 0.01, 15 wrong at 0.81
        "brier": (85 * 0.01 + 15 * 0.81) / 100,
        # |45 * 0.9 - 35| + |55 * 0.1 - 5| over 100
        "ece": (5.5 + 0.5) / 100,
    }
    assert set(m) == set(RATE_NAMES) | set(COUNT_NAMES)
    assert set(expected) == set(RATE_NAMES)
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, abs=1e-12), name


def test_perfect_predictions():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9])
    for name in RATE_NAMES:
        if name not in ("brier", "ece"):
            assert m[name] == 1.0, name
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.16 + 0.01) / 4)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (2, 0, 0, 2)


def test_all_wrong_predictions_are_zero_not_nan():
    m = binary_metrics([0, 0, 1, 1], [0.9, 0.6, 0.4, 0.1])
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1_pneumonia", "roc_auc"):
        assert m[name] == 0.0, name
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (0, 2, 2, 0)


def test_one_class_gives_nan_for_undefined_metrics_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normal = binary_metrics([0, 0, 0], [0.2, 0.7, 0.1])
        pneumonia = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    for name in ("roc_auc", "average_precision", "sensitivity", "balanced_accuracy"):
        assert math.isnan(normal[name]), name
    assert normal["npv"] == 1.0
    assert normal["specificity"] == pytest.approx(2 / 3)
    assert normal["ppv"] == 0.0  # one PNEUMONIA prediction, wrong: defined and 0
    assert normal["accuracy"] == pytest.approx(2 / 3)
    for name in ("roc_auc", "specificity", "balanced_accuracy"):
        assert math.isnan(pneumonia[name]), name
    assert pneumonia["sensitivity"] == pytest.approx(2 / 3)
    assert pneumonia["average_precision"] == 1.0


def test_no_positive_predictions_leave_precision_undefined():
    m = binary_metrics([0, 1, 1], [0.2, 0.3, 0.1])
    assert math.isnan(m["ppv"]) and math.isnan(m["precision_pneumonia"])
    assert m["sensitivity"] == 0.0
    assert m["f1_pneumonia"] == 0.0  # 2tp / (2tp + fp + fn) = 0 / 2 is defined
    assert m["npv"] == pytest.approx(1 / 3)


def test_threshold_is_inclusive():
    assert binary_metrics([0, 1], [0.3, 0.5], threshold=0.5)["tp"] == 1
    assert binary_metrics([0, 1], [0.3, 0.5], threshold=0.51)["tp"] == 0


def test_confusion_is_always_two_by_two_with_true_rows():
    assert confusion([0, 0], [0, 0]).tolist() == [[2, 0], [0, 0]]
    assert confusion([1], [0]).tolist() == [[0, 0], [1, 0]]
    assert confusion([0, 1, 1, 0], [1, 1, 0, 0]).tolist() == [[1, 1], [1, 1]]


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 2], [0.1, 0.2], "only 0"),
        ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
        ([0, 1], [0.1, np.nan], r"\[0, 1\]"),
        ([0, 1], [0.1], "shape"),
        ([], [], "non-empty"),
    ],
)
def test_bad_inputs_raise_value_error(y, p, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(y, p)


def test_ece_is_zero_when_calibrated():
    y = [1] * 3 + [0] * 7 + [1] * 8 + [0] * 2
    p = [0.3] * 10 + [0.8] * 10
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_a_known_miscalibration():
    # 4 at 0.2 with half PNEUMONIA (gap 0.3), 6 at 0.95 all PNEUMONIA (gap 0.05)
    y = [1, 1, 0, 0] + [1] * 6
    p = [0.2] * 4 + [0.95] * 6
    assert expected_calibration_error(y, p) == pytest.approx((4 * 0.3 + 6 * 0.05) / 10)
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(6.5 / 10 - 0.8))


def test_reliability_curve_bins():
    curve = reliability_curve([0, 1, 1, 0, 1], [0.0, 0.25, 0.5, 0.5, 1.0], n_bins=4)
    assert curve.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.count.tolist() == [1, 1, 2, 1]  # edges go to the upper bin, 1.0 to the last
    assert curve.mean_predicted.tolist() == [0.0, 0.25, 0.5, 1.0]
    assert curve.observed_fraction.tolist() == [0.0, 1.0, 0.5, 1.0]
    sparse = reliability_curve([0, 1], [0.1, 0.15], n_bins=3)
    assert sparse.count.tolist() == [2, 0, 0]
    assert (
        np.isnan(sparse.mean_predicted[1:]).all() and np.isnan(sparse.observed_fraction[1:]).all()
    )


def test_choose_threshold_on_a_constructed_example():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    assert choose_threshold(y, p, 0.75) == 0.7  # 3 of 4 positives, no false positive
    assert choose_threshold(y, p, 0.95) == 0.4  # all positives cost the negative at 0.6
    assert choose_threshold(y, p, 1.0) == 0.4
    assert choose_threshold(y, p, 0.0) == 0.9


def test_choose_threshold_prefers_the_highest_threshold_among_equally_specific_ones():
    # 0.8 and 0.6 both reach sensitivity 0.5 with specificity 1
    assert choose_threshold([0, 1, 1], [0.1, 0.8, 0.6], target_sensitivity=0.5) == 0.8


def test_choose_threshold_matches_brute_force_and_reproduces_its_sensitivity():
    y, p = _noisy(300, seed=4)
    candidates = np.unique(p)
    predicted = p[None, :] >= candidates[:, None]
    sensitivity = (predicted & (y == 1)).sum(axis=1) / (y == 1).sum()
    specificity = (~predicted & (y == 0)).sum(axis=1) / (y == 0).sum()
    for target in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        t = choose_threshold(y, p, target)
        found = binary_metrics(y, p, t)
        assert found["sensitivity"] >= target
        reaching = sensitivity >= target
        best = max(zip(specificity[reaching], candidates[reaching], strict=True))
        assert (found["specificity"], t) == pytest.approx(best, abs=1e-12)
        assert t == best[1]


def test_choose_threshold_rejects_one_class_and_bad_targets():
    with pytest.raises(ValueError, match=r"both NORMAL and PNEUMONIA.*is PNEUMONIA"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold([0, 1], [0.2, 0.9], target_sensitivity=95)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_ranking_metrics_match_sklearn_with_resampling_weights(seed):
    y, p = _noisy(400, seed)
    weights = np.random.default_rng(seed).integers(0, 4, size=(5, y.size)).astype(float)
    got = metrics._weighted_metrics(y, p, 0.5, weights)
    for row, w in enumerate(weights):
        assert got["roc_auc"][row] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
        assert got["average_precision"][row] == pytest.approx(
            average_precision_score(y, p, sample_weight=w), abs=1e-12
        )


@pytest.mark.parametrize(
    ("y", "p"),
    [
        _noisy(250, seed=7),
        _known_case(),
        ([0, 0, 0], [0.2, 0.7, 0.1]),
        ([0, 1, 1], [0.2, 0.3, 0.1]),
    ],
)
def test_vectorised_metrics_equal_binary_metrics_at_unit_weights(y, p):
    point = binary_metrics(y, p, 0.5)
    got = metrics._weighted_metrics(np.asarray(y), np.asarray(p), 0.5, np.ones((1, len(y))))
    for name in RATE_NAMES:
        assert got[name][0] == pytest.approx(point[name], abs=1e-12, nan_ok=True), name


def test_bootstrap_intervals_contain_the_point_estimate():
    y, p = _noisy(300, seed=1)
    point = binary_metrics(y, p)
    ci = bootstrap_ci(y, p, n_resamples=400)
    assert set(ci) == set(HEADLINE_METRICS)
    for name, (low, high) in ci.items():
        assert low < point[name] < high, name


def test_bootstrap_is_reproducible_by_seed():
    y, p = _noisy(200, seed=2)
    first = bootstrap_ci(y, p, n_resamples=200, seed=5)
    assert bootstrap_ci(y, p, n_resamples=200, seed=5) == first
    assert bootstrap_ci(y, p, n_resamples=200, seed=6) != first


def test_bootstrap_does_not_depend_on_chunking(monkeypatch):
    y, p = _noisy(100, seed=3)
    whole = bootstrap_ci(y, p, n_resamples=250, seed=1)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 100 * 7)  # 7 resamples a chunk
    chunked = bootstrap_ci(y, p, n_resamples=250, seed=1)
    for name, interval in whole.items():  # matrix products may round differently by shape
        assert chunked[name] == pytest.approx(interval, abs=1e-12), name


def test_grouped_bootstrap_resamples_whole_groups():
    # group A: 50 NORMAL, 40 right; group B: 50 PNEUMONIA, 45 right. A resample is AA, BB or AB.
    y = np.array([0] * 50 + [1] * 50)
    p = np.array([0.1] * 40 + [0.9] * 10 + [0.9] * 45 + [0.1] * 5)
    groups = ["A"] * 50 + ["B"] * 50
    names = ("accuracy", "sensitivity", "roc_auc")
    ci = bootstrap_ci(y, p, groups=groups, n_resamples=500, metrics=names)
    assert ci["accuracy"] == pytest.approx((0.8, 0.9))  # only A's, B's, or the whole accuracy
    assert ci["sensitivity"] == pytest.approx((0.9, 0.9))  # AA resamples dropped as undefined
    auc = binary_metrics(y, p)["roc_auc"]
    assert ci["roc_auc"] == pytest.approx((auc, auc))  # only AB defines it, and AB is the data
    per_image = bootstrap_ci(y, p, n_resamples=500, metrics=names)
    assert per_image["roc_auc"][1] - per_image["roc_auc"][0] > 0.05


def test_bootstrap_of_an_always_undefined_metric_is_nan():
    low, high = bootstrap_ci([0, 0, 0, 0], [0.1, 0.6, 0.2, 0.3], metrics=["sensitivity"])[
        "sensitivity"
    ]
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_narrows_with_more_data():
    small, large = _noisy(200, seed=8), _noisy(2000, seed=8)
    names = ("accuracy", "roc_auc", "sensitivity")
    ci_small = bootstrap_ci(*small, n_resamples=300, metrics=names)
    ci_large = bootstrap_ci(*large, n_resamples=300, metrics=names)
    for name in names:
        width_small = ci_small[name][1] - ci_small[name][0]
        width_large = ci_large[name][1] - ci_large[name][0]
        assert width_large < 0.5 * width_small, name


def test_bootstrap_rejects_bad_options():
    y, p = _noisy(20, seed=0)
    with pytest.raises(ValueError, match="unknown metrics"):
        bootstrap_ci(y, p, metrics=["auc"])
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(y, p, groups=["a"] * 19)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(y, p, level=95)


def test_summarize_is_json_ready_and_consistent():
    y, p = _noisy(150, seed=9)
    groups = [f"patient{i // 3}" for i in range(y.size)]
    report = summarize(y, p, 0.55, groups=groups, n_resamples=200, seed=3)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["threshold"] == 0.55
    assert (report["n_samples"], report["n_groups"]) == (150, 50)
    assert (report["n_resamples"], report["seed"], report["level"]) == (200, 3, 0.95)
    point = binary_metrics(y, p, 0.55)
    assert list(report["metrics"]) == list(RATE_NAMES)
    assert report["counts"] == {name: point[name] for name in COUNT_NAMES}
    ci = bootstrap_ci(y, p, 0.55, groups, n_resamples=200, seed=3, metrics=RATE_NAMES)
    for name, entry in report["metrics"].items():
        assert entry == {"value": point[name], "ci_low": ci[name][0], "ci_high": ci[name][1]}
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name


def test_summarize_writes_undefined_values_as_none():
    report = summarize([0, 0, 0, 0], [0.1, 0.6, 0.2, 0.3], 0.5, n_resamples=50)
    json.dumps(report, allow_nan=False)
    assert report["metrics"]["roc_auc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert report["metrics"]["specificity"]["value"] == 0.75
    assert report["n_groups"] is None
    assert report["counts"]["support_pneumonia"] == 0
