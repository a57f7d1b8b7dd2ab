"""The label-shift test: quiet on a site that differs only in its class mix, loud otherwise."""

import numpy as np
import pytest
from scipy.stats import binom

from pneumo_fastai.inference.label_shift_test import (
    ALPHA,
    binomial_tail,
    cramer_von_mises,
    label_shift_test,
)

SEPARATION = 3.0  # a NORMAL's latent score is N(-1.5, 1), a PNEUMONIA's N(+1.5, 1)


def _calibrated(latent: np.ndarray) -> np.ndarray:
    """P(PNEUMONIA) of a latent score, calibrated for validation's 1:3 mix (as the card's are)."""
    return 1 / (1 + np.exp(-(SEPARATION * latent + np.log(3))))


def _validation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    latent = np.r_[rng.normal(-1.5, 1, 400), rng.normal(1.5, 1, 1200)]
    return _calibrated(latent), np.r_[np.zeros(400), np.ones(1200)]


def _site(rng, n: int, normal_share: float, normal_mean: float = -1.5) -> np.ndarray:
    k = round(n * normal_share)
    return _calibrated(np.r_[rng.normal(normal_mean, 1, k), rng.normal(1.5, 1, n - k)])


@pytest.mark.parametrize("share", [0.25, 0.375, 0.6])
def test_a_pure_change_of_class_mix_rarely_raises_an_alarm(share):
    alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        p, y = _validation(rng)
        test = label_shift_test(_site(rng, 300, share), p, y, n_flagged=6, n_boot=200, seed=seed)
        alarms += test.rejected
        assert abs(test.normal_share - share) < 0.1
    assert alarms <= 3  # ALPHA = 5 %: one expected in 20


def test_normals_that_score_like_pneumonia_are_caught():
    rng = np.random.default_rng(0)
    p, y = _validation(rng)
    site = _site(rng, 300, 0.375, normal_mean=-0.5)  # NORMALs drift up, as at the new site
    test = label_shift_test(site, p, y, n_boot=200)
    assert test.rejected and test.p_value < ALPHA / 2
    assert "Cramér-von Mises" in test.describe()


def test_a_site_the_ood_check_flags_often_is_rejected_even_if_its_scores_fit():
    rng = np.random.default_rng(1)
    p, y = _validation(rng)
    site = _site(rng, 300, 0.375)
    assert not label_shift_test(site, p, y, n_flagged=6, n_boot=100).rejected
    flagged = label_shift_test(site, p, y, n_flagged=40, n_boot=100)
    assert flagged.rejected and flagged.ood_p_value < ALPHA / 2
    assert flagged.ood_share == pytest.approx(40 / 340)


@pytest.mark.parametrize(("k", "n", "rate"), [(0, 10, 0.02), (3, 100, 0.02), (15, 300, 0.02)])
def test_binomial_tail_matches_scipy(k, n, rate):
    assert binomial_tail(k, n, rate) == pytest.approx(binom.sf(k - 1, n, rate), rel=1e-9)


def test_the_distance_is_small_for_the_reference_itself_and_large_for_another_sample():
    rng = np.random.default_rng(2)
    normal, pneumonia = rng.beta(2, 8, 500), rng.beta(8, 2, 500)
    mix = np.concatenate([normal[:250], pneumonia[:250]])
    assert cramer_von_mises(mix, normal, pneumonia, 0.5) < 0.1
    assert cramer_von_mises(rng.beta(5, 5, 500), normal, pneumonia, 0.5) > 1.0
