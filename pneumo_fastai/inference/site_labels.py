"""Calibrate an export on a small labelled sample of a new site: temperature and threshold.

    fit = fit_site_labels(p, y, target_sensitivity=0.95)
    fit.threshold, fit.scale, fit.expected_sensitivity

What a hospital does before trusting a model: score a few of its own labelled X-rays. From them:

- **Temperature.** The calibrated probabilities are rescaled on the logit scale,
  p' = softmax(scale * log p) (for two classes, sigmoid(scale * logit p)): the site's own
  temperature, fitted by maximum likelihood on its labels. It changes the probabilities'
  calibration, not their order.
- **Threshold.** At the card's target sensitivity, chosen so that the sensitivity on the site's
  *other* images does not fall short on average. Picking the highest threshold at which the
  sample's own sensitivity reaches the target does fall short (small samples pick thresholds
  too high). Instead: with n PNEUMONIA scores, take the k-th lowest as the threshold, with
  k = floor((n + 1) * (1 - target)). A new PNEUMONIA image scores at or above it with
  probability (n + 1 - k) / (n + 1) on average over samples (the order statistic's coverage,
  distribution-free), which is >= target. It needs k >= 1, hence at least
  1 / (1 - target) - 1 PNEUMONIA images (19 at 0.95); `config` sets the minimum per class.
- **Figures.** Sensitivity and specificity at that threshold on the sample, with percentile
  bootstrap intervals (resampling each class), and the expected sensitivity above.

Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import ADAPT_MIN_NORMAL, ADAPT_MIN_PNEUMONIA

LEVEL = 0.95
N_BOOT = 1000


def min_per_class(target_sensitivity: float) -> dict[str, int]:
    """The smallest labelled sample per class that the threshold rule and the figures need."""
    need = math.ceil(1 / (1 - target_sensitivity) - 1 - 1e-9) if target_sensitivity < 1 else 10**9
    return {"NORMAL": ADAPT_MIN_NORMAL, "PNEUMONIA": max(ADAPT_MIN_PNEUMONIA, need)}


def rescale(p_pos: np.ndarray, scale: float) -> np.ndarray:
    """P(PNEUMONIA) after multiplying its logit by `scale`."""
    p = np.clip(np.asarray(p_pos, dtype=np.float64), 1e-12, 1 - 1e-12)
    return 1 / (1 + np.exp(-scale * np.log(p / (1 - p))))


def _nll(p_pos: np.ndarray, y: np.ndarray, scale: float) -> float:
    q = np.clip(rescale(p_pos, scale), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def fit_scale(p_pos: np.ndarray, y: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The logit scale that maximises the labels' likelihood (golden-section search on log)."""
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if _nll(p_pos, y, math.exp(c)) <= _nll(p_pos, y, math.exp(d)):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


def coverage_threshold(positives: np.ndarray, target: float) -> tuple[float, float]:
    """The threshold whose expected sensitivity on new images is >= `target`, and that figure."""
    s = np.sort(np.asarray(positives, dtype=np.float64))
    n = len(s)
    k = math.floor((n + 1) * (1 - target) + 1e-9)
    if k < 1:
        raise ValueError(f"{n} PNEUMONIA scores cannot set a threshold at sensitivity {target}")
    return float(s[k - 1]), (n + 1 - k) / (n + 1)


@dataclass(frozen=True)
class SiteFit:
    """What `fit_site_labels` found."""

    scale: float  # multiplies the logit of the calibrated P(PNEUMONIA)
    threshold: float  # on the rescaled P(PNEUMONIA)
    expected_sensitivity: float  # on the site's other images, on average over samples
    sensitivity: float  # on the sample, at the threshold
    specificity: float
    sensitivity_interval: tuple[float, float]
    specificity_interval: tuple[float, float]
    n: dict[str, int]  # labelled images per class


def _interval(draws: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def fit_site_labels(
    p_pos: np.ndarray,  # the site sample's calibrated P(PNEUMONIA)
    y: np.ndarray,  # its labels, 1: PNEUMONIA
    target_sensitivity: float,
    seed: int = 0,  # of the bootstrap
) -> SiteFit:
    """Temperature, threshold and figures from a labelled site sample (see the module doc)."""
    p_pos, y = np.asarray(p_pos, dtype=np.float64), np.asarray(y, dtype=int)
    scale = fit_scale(p_pos, y)
    q = rescale(p_pos, scale)
    threshold, expected = coverage_threshold(q[y == 1], target_sensitivity)
    pos, neg = q[y == 1], q[y == 0]
    rng = np.random.default_rng(seed)
    sens = np.array([np.mean(rng.choice(pos, len(pos)) >= threshold) for _ in range(N_BOOT)])
    spec = np.array([np.mean(rng.choice(neg, len(neg)) < threshold) for _ in range(N_BOOT)])
    return SiteFit(
        scale=scale,
        threshold=threshold,
        expected_sensitivity=expected,
        sensitivity=float(np.mean(pos >= threshold)),
        specificity=float(np.mean(neg < threshold)),
        sensitivity_interval=_interval(sens),
        specificity_interval=_interval(spec),
        n={"NORMAL": len(neg), "PNEUMONIA": len(pos)},
    )
