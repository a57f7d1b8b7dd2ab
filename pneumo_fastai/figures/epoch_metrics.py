"""The functions behind the metrics fastai shows after each epoch: pure functions of labels
and predictions (or class probabilities).

    from pneumo_fastai.figures.epoch_metrics import recall_pneumonia, collapsed
    recall_pneumonia(y_true, y_pred); collapsed(recall_pneumonia)(y3_true, y3_pred)

`model.learner_metrics` wraps them in fastai's `AccumMetric`. An exported Learner pickles them by
reference, so each is a module-level function, or a `collapsed` instance around one (the
three-class variants). Older exports name them `pneumo_fastai.evaluation.epoch_metrics.NAME` or
`pneumo_fastai.model._NAME`; both still resolve here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sklearn.metrics as skm
from numpy.typing import ArrayLike


def recall_normal(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Recall of NORMAL (label 0); 0 without NORMAL cases."""
    return skm.recall_score(y_true, y_pred, pos_label=0, zero_division=0)


def recall_pneumonia(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Recall of PNEUMONIA (label 1); 0 without PNEUMONIA cases."""
    return skm.recall_score(y_true, y_pred, pos_label=1, zero_division=0)


def f1_pneumonia(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """F1 of PNEUMONIA (label 1); 0 where it is undefined."""
    return skm.f1_score(y_true, y_pred, pos_label=1, zero_division=0)


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC AUC of the score of PNEUMONIA (nan unless both classes are present)."""
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return skm.roc_auc_score(y_true, y_score)


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean recall over the classes present (scikit-learn's)."""
    return skm.balanced_accuracy_score(y_true, y_pred)


def macro_auc(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Macro one-vs-rest ROC AUC over the classes (nan unless every class is present)."""
    probs = np.asarray(probs)
    if len(np.unique(y_true)) < probs.shape[1]:
        return float("nan")
    return skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro")


class collapsed:  # lower case: it is used as a function, like functools.partial
    """`func` on NORMAL (0) vs PNEUMONIA (every other class) of many-class labels and outputs.

    Predicted labels collapse as the true ones do; class probabilities (n, k) become
    P(PNEUMONIA) = 1 - P(NORMAL). An instance pickles as its class and `func`, which must be
    module-level.
    """

    def __init__(self, func: Callable[[np.ndarray, np.ndarray], float]):  # a binary metric
        self.func = func  # `func`, as functools.partial names it: fastai's AccumMetric reads it

    def __call__(self, y_true: ArrayLike, y_out: ArrayLike) -> float:
        out = np.asarray(y_out)
        pneumonia = 1 - out[:, 0] if out.ndim == 2 else (out != 0).astype(int)
        return self.func((np.asarray(y_true) != 0).astype(int), pneumonia)

    def __repr__(self) -> str:
        return f"collapsed({self.func.__name__})"
