"""Evaluation metrics for NORMAL (label 0) vs PNEUMONIA (label 1): point values, calibration,
the decision threshold, and bootstrap confidence intervals. Pure numpy and scikit-learn.

    from pneumo_fastai.figures.metrics import choose_threshold, summarize
    t = choose_threshold(y_valid, p_valid, target_sensitivity=0.95)  # on the validation split
    report = summarize(y_test, p_test, t, groups=test_patient_ids)  # JSON-ready

`y_true` holds 0/1 labels and `p_pos` the predicted probability of PNEUMONIA. A value that the
data leave undefined (ROC AUC with one class present, precision with no positive predictions,
a specificity without NORMAL cases) is `float('nan')`: never an exception, never a stand-in 0.
`summarize` writes it as `None`, so that its result is valid JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from ..config import CLASSES, SUBTYPES

ECE_BINS = 15
COUNT_NAMES: tuple[str, ...] = ("tn", "fp", "fn", "tp", "support_normal", "support_pneumonia")
_DECISION = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv")
_PER_CLASS = (
    "precision_normal", "recall_normal", "f1_normal",
    "precision_pneumonia", "recall_pneumonia", "f1_pneumonia",
)  # fmt: skip
_RANKING = ("roc_auc", "average_precision", "brier", "ece")
RATE_NAMES: tuple[str, ...] = _DECISION + _PER_CLASS + _RANKING
HEADLINE_METRICS: tuple[str, ...] = (*_DECISION, "f1_pneumonia", *_RANKING)  # the report's rows
_CHUNK_ELEMENTS = 2_000_000  # bounds the resamples x samples weight matrix held at once


def _labels(values: ArrayLike, name: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 ({CLASSES[0]}) and 1 ({CLASSES[1]})")
    return labels.astype(np.int64)


def _check(y_true: ArrayLike, p_pos: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true, "y_true")
    p = np.asarray(p_pos, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"p_pos has shape {p.shape} but y_true has shape {y.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"p_pos must be probabilities of {CLASSES[1]} in [0, 1] (no nan)")
    return y, p


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def confusion(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """2x2 counts: rows are true NORMAL/PNEUMONIA, columns predicted NORMAL/PNEUMONIA."""
    y, pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if pred.shape != y.shape:
        raise ValueError(f"y_pred has shape {pred.shape} but y_true has shape {y.shape}")
    return confusion_matrix(y, pred, labels=[0, 1])


def binary_metrics(
    y_true: ArrayLike,
    p_pos: ArrayLike,
    threshold: float = 0.5,  # predict PNEUMONIA where p_pos >= threshold
) -> dict[str, float]:
    """Metrics of the decision `p_pos >= threshold`: RATE_NAMES as floats, COUNT_NAMES as ints."""
    y, p = _check(y_true, p_pos)
    if math.isnan(threshold):
        raise ValueError("threshold is nan; pass a number, e.g. from choose_threshold")
    pred = (p >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion(y, pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=[0, 1], zero_division=np.nan
    )
    has_pos, has_neg = bool(y.any()), bool((y == 0).any())
    values = {
        "accuracy": accuracy_score(y, pred),
        # sklearn's balanced accuracy averages only the classes present; ours is nan then
        "balanced_accuracy": (recall[0] + recall[1]) / 2,
        "sensitivity": recall[1],
        "specificity": recall[0],
        "ppv": precision[1],
        "npv": precision[0],
        "precision_normal": precision[0],
        "recall_normal": recall[0],
        "f1_normal": f1[0],
        "precision_pneumonia": precision[1],
        "recall_pneumonia": recall[1],
        "f1_pneumonia": f1[1],
        "roc_auc": roc_auc_score(y, p) if has_pos and has_neg else np.nan,
        # sklearn returns 0 without positives, where average precision is undefined
        "average_precision": average_precision_score(y, p) if has_pos else np.nan,
        "brier": brier_score_loss(y, p),
        "ece": expected_calibration_error(y, p),
    }
    counts = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    counts |= {"support_normal": support[0], "support_pneumonia": support[1]}
    return {k: float(v) for k, v in values.items()} | {k: int(v) for k, v in counts.items()}


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin calibration of the PNEUMONIA probability; empty bins hold nan and count 0."""

    edges: np.ndarray  # n_bins + 1 equal-width edges over [0, 1]
    mean_predicted: np.ndarray  # mean p_pos of the samples in each bin
    observed_fraction: np.ndarray  # fraction of PNEUMONIA among them
    count: np.ndarray  # number of samples in each bin


def _bin_of(p: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")
    # bin i is [i/n, (i+1)/n); the last bin also holds p == 1
    return np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], p, side="right")


def reliability_curve(
    y_true: ArrayLike, p_pos: ArrayLike, n_bins: int = ECE_BINS
) -> ReliabilityCurve:
    """Mean predicted probability, observed PNEUMONIA fraction and count per equal-width bin."""
    y, p = _check(y_true, p_pos)
    bins = _bin_of(p, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    return ReliabilityCurve(
        edges=np.linspace(0, 1, n_bins + 1),
        mean_predicted=_div(np.bincount(bins, p, minlength=n_bins), count),
        observed_fraction=_div(np.bincount(bins, y, minlength=n_bins), count),
        count=count,
    )


def expected_calibration_error(
    y_true: ArrayLike, p_pos: ArrayLike, n_bins: int = ECE_BINS
) -> float:
    """Sum over equal-width bins of p_pos of (count / n) * |mean p_pos - PNEUMONIA fraction|."""
    curve = reliability_curve(y_true, p_pos, n_bins)
    gaps = np.abs(curve.mean_predicted - curve.observed_fraction)
    full = curve.count > 0
    return float((curve.count[full] * gaps[full]).sum() / curve.count.sum())


def choose_threshold(
    y_true: ArrayLike,  # validation labels, never the test split's
    p_pos: ArrayLike,
    target_sensitivity: float = 0.95,  # least PNEUMONIA recall to keep, in [0, 1]
) -> float:
    """The most specific threshold (the highest among ties) whose sensitivity reaches the target."""
    y, p = _check(y_true, p_pos)
    if not 0 <= target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in [0, 1]; got {target_sensitivity}")
    if y.min() == y.max():
        raise ValueError(
            f"choosing a threshold needs both {CLASSES[0]} and {CLASSES[1]} cases, but every "
            f"label given is {CLASSES[y[0]]}; use a validation split that holds both classes"
        )
    _, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # Point 0 (threshold inf) predicts nothing. The rest are the distinct scores, falling, so
    # specificity never rises along them: the first that reaches the target is the answer.
    # The lowest score has sensitivity 1, so any target in [0, 1] is reached; min() still
    # falls back to the highest sensitivity should none be.
    tpr, thresholds = tpr[1:], thresholds[1:]
    reached = tpr >= min(target_sensitivity, tpr.max())
    return float(thresholds[np.argmax(reached)])


def _weighted_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, w: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric in RATE_NAMES for each row of sample weights `w` (resamples x samples)."""
    pos = y == 1
    pred = p >= threshold
    tp, fn, fp, tn = (
        w @ m.astype(float) for m in (pos & pred, pos & ~pred, ~pos & pred, ~pos & ~pred)
    )
    n_pos, n_neg = tp + fn, tn + fp
    sensitivity, specificity = _div(tp, n_pos), _div(tn, n_neg)
    ppv, npv = _div(tp, tp + fp), _div(tn, tn + fn)
    f1_pos, f1_neg = _div(2 * tp, 2 * tp + fp + fn), _div(2 * tn, 2 * tn + fn + fp)

    # ranking metrics over blocks of tied scores, highest score first
    order = np.argsort(-p, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(p[order]) != 0])
    w_sorted = w[:, order]
    pos_w = np.add.reduceat(w_sorted * pos[order], starts, axis=1)
    neg_w = np.add.reduceat(w_sorted * ~pos[order], starts, axis=1)
    cum_tp, cum_fp = np.cumsum(pos_w, axis=1), np.cumsum(neg_w, axis=1)
    # each positive outranks the negatives scored below it and ties with half of its own block
    negatives_below = n_neg[:, None] - cum_fp
    auc = _div((pos_w * (negatives_below + neg_w / 2)).sum(axis=1), n_pos * n_neg)
    precision_at = np.divide(cum_tp, cum_tp + cum_fp, out=np.zeros_like(cum_tp), where=pos_w > 0)
    ap = _div((pos_w * precision_at).sum(axis=1), n_pos)

    bins = _bin_of(p, ECE_BINS)
    onehot = np.zeros((y.size, ECE_BINS))
    onehot[np.arange(y.size), bins] = 1
    bin_p, bin_y = w @ (onehot * p[:, None]), w @ (onehot * y[:, None])
    total = n_pos + n_neg
    return {
        "accuracy": (tp + tn) / total,
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": ppv,
        "npv": npv,
        "precision_normal": npv,
        "recall_normal": specificity,
        "f1_normal": f1_neg,
        "precision_pneumonia": ppv,
        "recall_pneumonia": sensitivity,
        "f1_pneumonia": f1_pos,
        "roc_auc": auc,
        "average_precision": ap,
        "brier": (w @ (p - y) ** 2) / total,
        "ece": np.abs(bin_p - bin_y).sum(axis=1) / total,
    }


def _group_index(groups: Sequence[str] | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    ids = np.asarray(groups)
    if ids.shape != (n,):
        raise ValueError(f"groups has shape {ids.shape} but there are {n} samples")
    return np.unique(ids, return_inverse=True)[1].ravel()


def bootstrap_ci(
    y_true: ArrayLike,
    p_pos: ArrayLike,
    threshold: float = 0.5,  # predict PNEUMONIA where p_pos >= threshold
    groups: Sequence[str] | None = None,  # e.g. patient ids: resample whole groups
    n_resamples: int = 1000,
    seed: int = 0,  # seeds np.random.default_rng
    level: float = 0.95,  # coverage of each interval
    metrics: Sequence[str] = HEADLINE_METRICS,  # names from RATE_NAMES
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric; resamples where it is undefined are dropped."""
    y, p = _check(y_true, p_pos)
    unknown = sorted(set(metrics) - set(RATE_NAMES))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(RATE_NAMES)}")
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1; got {n_resamples}, {level}")
    group_of = _group_index(groups, y.size)
    n_groups = int(group_of.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // y.size)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        picks = rng.integers(0, n_groups, size=(size, n_groups))
        # how often each group was drawn in each resample; its samples carry that weight
        offsets = n_groups * np.arange(size)[:, None]
        per_group = np.bincount((picks + offsets).ravel(), minlength=size * n_groups)
        weights = per_group.reshape(size, n_groups)[:, group_of].astype(float)
        values = _weighted_metrics(y, p, threshold, weights)
        for name in metrics:
            draws[name].append(values[name])
    tails = [50 * (1 - level), 50 * (1 + level)]
    intervals = {}
    for name, parts in draws.items():
        kept = np.concatenate(parts)
        kept = kept[~np.isnan(kept)]
        low, high = np.percentile(kept, tails) if kept.size else (np.nan, np.nan)
        intervals[name] = (float(low), float(high))
    return intervals


def json_number(value: float) -> float | None:
    """`value` for JSON: None where it is nan (undefined), else a plain float."""
    return None if math.isnan(value) else float(value)


def nan_to_none(values: dict[str, float]) -> dict[str, float | None]:
    """`json_number` of every float of a metrics dict; counts (ints) pass through."""
    return {k: json_number(v) if isinstance(v, float) else v for k, v in values.items()}


def summarize(
    y_true: ArrayLike,
    p_pos: ArrayLike,
    threshold: float,  # the decision threshold, chosen on validation data
    groups: Sequence[str] | None = None,  # e.g. patient ids: resample whole groups
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Point values, bootstrap intervals and counts as a JSON-ready dict (nan becomes None)."""
    point = binary_metrics(y_true, p_pos, threshold)
    ci = bootstrap_ci(
        y_true, p_pos, threshold, groups, n_resamples, seed, level, metrics=RATE_NAMES
    )
    return {
        "threshold": float(threshold),
        "n_samples": point["support_normal"] + point["support_pneumonia"],
        "n_groups": None if groups is None else len(set(groups)),
        "n_resamples": n_resamples,
        "seed": seed,
        "level": level,
        "metrics": {
            name: {
                "value": json_number(point[name]),
                "ci_low": json_number(ci[name][0]),
                "ci_high": json_number(ci[name][1]),
            }
            for name in RATE_NAMES
        },
        "counts": {name: point[name] for name in COUNT_NAMES},
    }


def multiclass_metrics(
    labels: ArrayLike,  # class indices, 0 = NORMAL
    probs: ArrayLike,  # (n, n_classes)
    classes: Sequence[str] = SUBTYPES,
) -> dict[str, float]:
    """Figures of the argmax class: accuracy, balanced accuracy, per-class precision, recall and
    F1, macro one-vs-rest ROC AUC, and the bacteria-vs-virus accuracy among PNEUMONIA images
    (the higher of P(BACTERIA) and P(VIRUS) against the file's own label, Kermany et al.'s)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(axis=1)
    k = len(classes)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, labels=list(range(k)), zero_division=np.nan
    )
    present = len(np.unique(y)) == k
    macro_auc = roc_auc_score(y, p, multi_class="ovr", average="macro") if present else np.nan
    sick = y != 0
    subtype = 1 + p[sick][:, 1:].argmax(axis=1)
    out = {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.nanmean(recall)),
        "macro_auc": float(macro_auc),
        "bacteria_vs_virus_accuracy": float((subtype == y[sick]).mean()) if sick.any() else np.nan,
    }
    for i, c in enumerate(classes):
        name = c.lower()
        out |= {f"precision_{name}": precision[i], f"recall_{name}": recall[i], f"f1_{name}": f1[i]}
    return {key: float(v) for key, v in out.items()}


def multiclass_summary(
    labels: ArrayLike,  # class indices
    probs: ArrayLike,  # (n, n_classes)
    classes: Sequence[str] = SUBTYPES,
    groups: Sequence[str] | None = None,  # e.g. patient ids: resample whole groups
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """`multiclass_metrics` with percentile bootstrap intervals, and the confusion matrix."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    point = multiclass_metrics(y, p, classes)
    group_of = _group_index(groups, y.size)
    members = [np.flatnonzero(group_of == g) for g in range(int(group_of.max()) + 1)]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(n_resamples):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        for name, value in multiclass_metrics(y[idx], p[idx], classes).items():
            draws[name].append(value)
    tails = [50 * (1 - level), 50 * (1 + level)]
    metrics = {}
    for name, value in point.items():
        kept = np.array(draws[name])
        kept = kept[~np.isnan(kept)]
        low, high = np.percentile(kept, tails) if kept.size else (np.nan, np.nan)
        metrics[name] = {
            "value": json_number(value),
            "ci_low": json_number(float(low)),
            "ci_high": json_number(float(high)),
        }
    counts = confusion_matrix(y, p.argmax(axis=1), labels=list(range(len(classes))))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
    return {
        "classes": list(classes),
        "n_samples": int(y.size),
        "n_resamples": n_resamples,
        "seed": seed,
        "level": level,
        "metrics": metrics,
        "confusion_matrix": {
            "rows": [f"true {c}" for c in classes],
            "columns": [f"predicted {c}" for c in classes],
            "counts": counts.tolist(),
            "normalized": [[json_number(float(v)) for v in row] for row in normalised],
        },
    }
