"""Fit an export's OOD detector: Gaussian statistics of training features, a validation threshold.

Called by `train` once the best epoch is restored (see `inference/ood_scores.py` for the
method). The training split's features come from one inference pass over it (no augmentation);
the validation split's were kept during the best epoch's own validation pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..card import ModelOod
from ..inference.ood_scores import ALPHA, GaussianStats, conformal_threshold, fit_gaussian

OOD_METHOD = "mahalanobis"
FEATURES = "pooled layer4 (the head's average pool, 512 values)"


@dataclass(frozen=True)
class FittedDetector:
    """What `fit_detector` found: the statistics file's content and the card's record."""

    stats: GaussianStats
    ood: ModelOod  # the card's `ood` section (its file is listed in `files`)
    valid_scores: np.ndarray  # one per validation image, in order


def fit_detector(
    train_features: np.ndarray,  # (n_train, d)
    train_labels: np.ndarray,  # (n_train,) class indices
    valid_features: np.ndarray,  # (n_valid, d)
    alpha: float = ALPHA,  # share of validation images to flag
) -> FittedDetector:
    """Class means and shared covariance on train, the threshold on validation (and train)."""
    stats, shrinkage = fit_gaussian(train_features, train_labels)
    train_scores = stats.scores(train_features)
    valid_scores = stats.scores(valid_features)
    threshold = conformal_threshold(valid_scores, train_scores, alpha)
    ood = ModelOod(
        method=OOD_METHOD,
        features=FEATURES,
        alpha=alpha,
        threshold=threshold,
        threshold_rule="(n+1) conformal quantile of the validation scores at 1 - alpha, "
        "at least the training scores' 1 - alpha quantile",
        shrinkage=shrinkage,
        n_train=len(train_scores),
        n_valid=len(valid_scores),
        valid_flagged=float((valid_scores > threshold).mean()),
    )
    return FittedDetector(stats, ood, valid_scores)
