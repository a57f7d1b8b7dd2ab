"""Label-shift adaptation: EM recovers a new site's class shares from unlabelled posteriors."""

import numpy as np
import pytest

from pneumo_fastai.inference.prior_shift import (
    PriorShift,
    adjust,
    bootstrap_interval,
    em_prevalence,
)

SOURCE = np.array([0.26, 0.74])  # NORMAL, PNEUMONIA as in Kermany's training split


def _site(n: int, normal_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and exact posteriors under SOURCE for a site with `normal_share` NORMAL images.

    Each class draws a score from its own gaussian (the images look alike at every site); the
    posterior a model calibrated on the source computes is the Bayes posterior under SOURCE.
    """
    rng = np.random.default_rng(seed)
    y = (rng.random(n) >= normal_share).astype(int)
    x = rng.normal(np.where(y == 1, 1.2, -1.2), 1.0)
    log_lr = 2.4 * x  # log N(x; 1.2, 1) - log N(x; -1.2, 1)
    p1 = 1 / (1 + np.exp(-(log_lr + np.log(SOURCE[1] / SOURCE[0]))))
    return y, np.column_stack([1 - p1, p1])


@pytest.mark.parametrize("normal_share", [0.26, 0.375, 0.6])
def test_em_finds_the_sites_share_within_its_bootstrap_interval(normal_share):
    y, probs = _site(1500, normal_share, seed=1)
    estimate = em_prevalence(probs, SOURCE)
    lo, hi = bootstrap_interval(probs, SOURCE, n_boot=100, seed=0)
    truth = np.mean(y == 0)
    assert lo[0] <= truth <= hi[0]
    assert abs(estimate[0] - truth) < 0.04 and estimate.sum() == pytest.approx(1)
    assert hi[0] - lo[0] < 0.1


def test_on_source_like_data_em_stays_at_the_source():
    _, probs = _site(4000, SOURCE[0], seed=2)
    assert em_prevalence(probs, SOURCE) == pytest.approx(SOURCE, abs=0.03)


def test_adjusting_to_the_true_shares_gives_the_sites_bayes_posterior():
    _, probs = _site(2000, 0.6, seed=3)
    target = np.array([0.6, 0.4])
    adapted = PriorShift(SOURCE, target).apply(probs)
    # the Bayes posterior at the site, computed directly from the same scores
    odds = probs[:, 1] / probs[:, 0] * (target[1] / target[0]) / (SOURCE[1] / SOURCE[0])
    assert adapted[:, 1] == pytest.approx(odds / (1 + odds))
    assert adjust(probs, SOURCE, SOURCE) == pytest.approx(probs)


def test_more_normal_cases_raise_specificity_at_the_cards_threshold():
    y, probs = _site(3000, 0.6, seed=4)
    t = 0.5
    shift = PriorShift(SOURCE, em_prevalence(probs, SOURCE))
    before, after = probs[:, 1] >= t, shift.apply(probs)[:, 1] >= t
    spec = lambda pred: np.mean(~pred[y == 0])  # noqa: E731
    assert spec(after) > spec(before)
    raw = shift.raw_threshold(t)
    assert raw > t and np.array_equal(after, probs[:, 1] >= raw)


def test_three_classes_have_no_single_raw_threshold():
    shift = PriorShift(np.array([0.3, 0.4, 0.3]), np.array([0.5, 0.3, 0.2]))
    assert shift.raw_threshold(0.5) is None
    assert shift.apply(np.array([[0.2, 0.5, 0.3]])).sum() == pytest.approx(1)
