"""The metrics fastai shows after each epoch, as `AccumMetric`s over the validation pass.

    from pneumo_fastai.evaluation.epoch_metrics import learner_metrics
    learn = vision_learner(dls, resnet34, metrics=learner_metrics(dls.c))

An exported Learner pickles these by reference, so each is a module-level function, or a
`collapsed` instance around one (the three-class variants). Exports made before they moved here
name them `pneumo_fastai.model._recall_normal` and so on; `model.py` resolves those names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sklearn.metrics as skm
from fastai.metrics import AccumMetric, ActivationType, accuracy
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


def learner_metrics(n_classes: int = 2) -> list:
    """Metrics shown each epoch: accuracy, recall of NORMAL and PNEUMONIA, F1 (PNEUMONIA),
    ROC AUC of P(PNEUMONIA); with more classes, also balanced accuracy and macro AUC."""
    argmax = dict(dim_argmax=-1, to_np=True, invert_arg=True)
    if n_classes == 2:
        return [
            accuracy,
            AccumMetric(recall_normal, name="recall_normal", **argmax),
            AccumMetric(recall_pneumonia, name="recall_pneumonia", **argmax),
            AccumMetric(f1_pneumonia, name="f1", **argmax),
            AccumMetric(roc_auc, name="roc_auc", activation=ActivationType.BinarySoftmax, **argmax),
        ]
    softmax = dict(
        activation=ActivationType.Softmax, dim_argmax=-1, to_np=True, invert_arg=True, flatten=False
    )
    return [
        accuracy,
        AccumMetric(balanced_accuracy, name="balanced_accuracy", **argmax),
        AccumMetric(collapsed(recall_normal), name="recall_normal", **argmax),
        AccumMetric(collapsed(recall_pneumonia), name="recall_pneumonia", **argmax),
        AccumMetric(collapsed(f1_pneumonia), name="f1", **argmax),
        AccumMetric(collapsed(roc_auc), name="roc_auc", **softmax),
        AccumMetric(macro_auc, name="macro_auc", **softmax),
    ]
