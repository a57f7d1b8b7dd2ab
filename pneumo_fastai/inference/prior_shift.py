"""Adapting calibrated probabilities to a new site's class mix (label shift), without labels.

    shift = PriorShift(source=np.array([0.26, 0.74]), target=em_prevalence(probs, source))
    adapted = shift.apply(probs)      # rows sum to 1; decide with the card's threshold as before

Under label shift the images of each class look the same at the new site, only the classes'
shares differ. Bayes' rule then gives the new posterior from the old one,
p_t(y|x) ∝ p_s(y|x) · π_t(y) / π_s(y), and the new shares π_t can be estimated from unlabelled
images by the EM algorithm of Saerens, Latinne & Decaestecker (2002, Neural Computation 14:21):
alternate π_t ← mean of the adapted posteriors, posteriors ← adapted with π_t, until π_t stops
moving. Written here in numpy (a dozen lines; no maintained library implements it on its own),
with a bootstrap over images for its interval. Nothing here imports torch: the ONNX engine
applies the same rule.

`source` is what the calibrated probabilities assume: the mean of the export's validation
probabilities, the fixed point of EM on the validation split itself (the network is trained
with balanced sampling and calibrated by a temperature, so neither 50/50 nor the label counts
are exactly its prior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EM_TOLERANCE = 1e-6  # stop when no class share moves more than this
EM_MAX_ITER = 1000


def adjust(probs: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Posteriors (n, k) under class shares `source`, re-weighted to `target` and renormalised."""
    w = np.asarray(target, dtype=np.float64) / np.asarray(source, dtype=np.float64)
    out = np.asarray(probs, dtype=np.float64) * w
    return out / out.sum(axis=1, keepdims=True)


def em_prevalence(probs: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The class shares (k,) of the images behind `probs` (n, k), by Saerens et al.'s EM."""
    target = np.asarray(source, dtype=np.float64)
    for _ in range(EM_MAX_ITER):
        updated = adjust(probs, source, target).mean(axis=0)
        done = np.abs(updated - target).max() < EM_TOLERANCE
        target = updated
        if done:
            break
    return target


def mean_shares(p_pos: np.ndarray) -> np.ndarray:
    """(NORMAL, PNEUMONIA) shares of the mean P(PNEUMONIA): the `source` of validation's scores."""
    mean = float(np.mean(p_pos))
    return np.array([1 - mean, mean])


def clipped_estimate(
    p_pos: np.ndarray, source: np.ndarray, clip: tuple[float, float]
) -> PriorShift:
    """The correction to the EM estimate of the site behind `p_pos`, shares kept inside `clip`."""
    estimate = np.clip(em_prevalence(np.column_stack([1 - p_pos, p_pos]), source), *clip)
    return PriorShift(source, estimate / estimate.sum())


def bootstrap_interval(
    probs: np.ndarray,
    source: np.ndarray,
    n_boot: int = 200,  # resamples of the images
    seed: int = 0,
    level: float = 0.95,
) -> np.ndarray:
    """(2, k): the lower and upper percentile of the EM estimate over resampled images."""
    rng = np.random.default_rng(seed)
    n = len(probs)
    draws = np.array([em_prevalence(probs[rng.integers(0, n, n)], source) for _ in range(n_boot)])
    tail = (1 - level) / 2 * 100
    return np.percentile(draws, [tail, 100 - tail], axis=0)


@dataclass(frozen=True)
class PriorShift:
    """The rule an adapted export applies to its calibrated probabilities."""

    source: np.ndarray  # (k,) class shares the calibrated probabilities assume
    target: np.ndarray  # (k,) class shares of the new site

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """`probs` (n, k) as posteriors at the new site."""
        return adjust(probs, self.source, self.target)

    def raw_threshold(self, threshold: float) -> float | None:
        """The unadapted P(PNEUMONIA) at which the adapted one equals `threshold` (None: k > 2).

        With more NORMAL cases than in training it is higher than `threshold`: deciding with
        the card's threshold on adapted probabilities calls PNEUMONIA less often.
        """
        if len(self.source) != 2:
            return None
        w = self.target / self.source
        odds = threshold / (1 - threshold) * w[0] / w[1]
        return float(odds / (1 + odds))
