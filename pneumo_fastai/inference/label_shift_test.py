"""Does a new site differ from training only in its class mix? The test before a prior correction.

    test = label_shift_test(site_p, valid_p, valid_y, n_flagged=3, n_site=300)
    test.rejected        # True: the site's images look different, correct nothing

A prior correction (`prior_shift.py`) is right only under label shift: each class's images look
at the new site as they did in training, only the classes' shares differ. Then the site's
P(PNEUMONIA) scores are a mixture of the validation split's two class-conditional score
distributions (from `NAME.valid.csv`), weighted by the site's NORMAL share. This module checks
that, two ways:

1. **Fit of the mixture.** The NORMAL share is estimated by EM (Saerens et al. 2002, as `adapt`
   does), and the Cramér-von Mises distance between the site's scores and that mixture is
   compared with its distribution under label shift: a bootstrap that redraws the validation
   split's scores (the reference is a finite sample too) and a site of the same size from the
   fitted mixture, fitting the share again on each draw.
2. **The OOD check.** It flags `OOD_RATE` (2 %) of validation images by construction; a site
   where it flags far more (binomial tail) has images unlike training's.

Each test is run at `ALPHA / 2` (Bonferroni), so that on a site that truly differs only in its
class mix the two together raise a false alarm at most `ALPHA` of the time. Nothing here imports
torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .prior_shift import em_prevalence, mean_shares

ALPHA = 0.05  # false-alarm rate of the two tests together
OOD_RATE = 0.02  # share of validation images the OOD check flags (its threshold's quantile)
N_BOOT = 300  # bootstrap draws of the distance's null distribution


@dataclass(frozen=True)
class ShiftTest:
    """The outcome of `label_shift_test`."""

    normal_share: float  # the site's NORMAL share fitted by EM
    distance: float  # Cramér-von Mises distance of the site's scores from the fitted mixture
    p_value: float  # of `distance` under label shift (bootstrap)
    ood_share: float | None  # share of the site's readable images the OOD check flagged
    ood_p_value: float | None  # of that share (or more) if the check's rate were `OOD_RATE`

    @property
    def rejected(self) -> bool:
        """Whether the site's images differ from training's beyond a change of class mix."""
        tests = [self.p_value, self.ood_p_value]
        return any(p is not None and p < ALPHA / 2 for p in tests)

    def describe(self) -> str:
        """One plain sentence of what was tested and found."""
        words = (
            f"the site's P(PNEUMONIA) scores against a mix of validation's NORMAL and PNEUMONIA "
            f"scores ({self.normal_share:.0%} NORMAL): Cramér-von Mises distance "
            f"{self.distance:.3f}, p = {self.p_value:.3f}"
        )
        if self.ood_share is not None:
            words += (
                f"; the OOD check flagged {self.ood_share:.1%} of the site's images "
                f"(validation: {OOD_RATE:.0%}), p = {self.ood_p_value:.3g}"
            )
        return words


def _shares(p_site: np.ndarray, source: np.ndarray) -> float:
    probs = np.column_stack([1 - p_site, p_site])
    return float(em_prevalence(probs, source)[0])


def cramer_von_mises(x: np.ndarray, normal: np.ndarray, pneumonia: np.ndarray, w: float) -> float:
    """One-sample Cramér-von Mises statistic of `x` against the mixture of two samples' CDFs."""
    xs = np.sort(x)
    n = len(xs)
    cdf = w * np.searchsorted(np.sort(normal), xs, side="right") / len(normal) + (
        1 - w
    ) * np.searchsorted(np.sort(pneumonia), xs, side="right") / len(pneumonia)
    return float(1 / (12 * n) + np.sum((cdf - (2 * np.arange(1, n + 1) - 1) / (2 * n)) ** 2))


def binomial_tail(k: int, n: int, rate: float) -> float:
    """P(X >= k) for X ~ Binomial(n, rate)."""
    if k <= 0:
        return 1.0
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(rate) + (n - i) * math.log1p(-rate)
        for i in range(k, n + 1)
    ]  # fmt: skip
    top = max(log_terms)
    return float(min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms)))


def label_shift_test(
    p_site: np.ndarray,  # the site's unadapted P(PNEUMONIA), OOD-flagged images left out
    p_valid: np.ndarray,  # validation's P(PNEUMONIA) (`NAME.valid.csv`)
    y_valid: np.ndarray,  # validation's labels, 1: PNEUMONIA
    n_flagged: int | None = None,  # site images the OOD check flagged (None: no check)
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> ShiftTest:
    """Test that the site's scores are a mixture of validation's class-conditional scores."""
    p_site, p_valid, y_valid = map(np.asarray, (p_site, p_valid, y_valid))
    normal, pneumonia = p_valid[y_valid == 0], p_valid[y_valid == 1]
    w = _shares(p_site, mean_shares(p_valid))
    observed = cramer_von_mises(p_site, normal, pneumonia, w)
    rng = np.random.default_rng(seed)
    n = len(p_site)
    null = np.empty(n_boot)
    for b in range(n_boot):
        ref_n = normal[rng.integers(0, len(normal), len(normal))]
        ref_p = pneumonia[rng.integers(0, len(pneumonia), len(pneumonia))]
        is_normal = rng.random(n) < w
        site = np.where(
            is_normal,
            normal[rng.integers(0, len(normal), n)],
            pneumonia[rng.integers(0, len(pneumonia), n)],
        )
        w_b = _shares(site, mean_shares(np.concatenate([ref_n, ref_p])))
        null[b] = cramer_von_mises(site, ref_n, ref_p, w_b)
    p_value = float((1 + np.sum(null >= observed)) / (n_boot + 1))
    ood_share = ood_p = None
    if n_flagged is not None:
        total = n + n_flagged
        ood_share = n_flagged / total
        ood_p = binomial_tail(n_flagged, total, OOD_RATE)
    return ShiftTest(w, observed, p_value, ood_share, ood_p)
