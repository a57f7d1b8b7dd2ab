"""Fitting a site's temperature and threshold on a small labelled sample of it."""

import numpy as np
import pytest

from pneumo_fastai.inference.site_adjustment import LogitScale
from pneumo_fastai.inference.site_labels import (
    coverage_threshold,
    fit_scale,
    fit_site_labels,
    min_per_class,
    rescale,
)


def test_the_minimum_sample_is_what_the_threshold_rule_needs():
    assert min_per_class(0.95) == {"NORMAL": 10, "PNEUMONIA": 20}
    assert min_per_class(0.98)["PNEUMONIA"] == 49
    coverage_threshold(np.linspace(0, 1, 19), 0.95)  # 19 is the least that works at 0.95
    with pytest.raises(ValueError, match="cannot set a threshold"):
        coverage_threshold(np.linspace(0, 1, 18), 0.95)


def test_the_chosen_threshold_keeps_the_target_sensitivity_on_average_where_the_naive_one_fails():
    rng = np.random.default_rng(0)
    ours, naive = [], []
    for _ in range(2000):
        sample = rng.normal(size=60)  # PNEUMONIA scores; a new one is N(0, 1) too
        t, expected = coverage_threshold(sample, 0.95)
        ours.append(1 - _normal_cdf(t))
        s = np.sort(sample)  # the highest threshold at which the sample's sensitivity is >= 0.95
        naive.append(1 - _normal_cdf(s[int(np.floor(0.05 * 60))]))
    assert expected == pytest.approx(58 / 61)
    assert np.mean(ours) >= 0.95 - 0.003
    assert np.mean(naive) < 0.945


def _normal_cdf(x: float) -> float:
    from math import erf, sqrt

    return 0.5 * (1 + erf(x / sqrt(2)))


def test_the_fitted_scale_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 4000)
    y = (rng.random(4000) < rescale(p, 2.5)).astype(int)
    assert fit_scale(p, y) == pytest.approx(2.5, rel=0.15)


def test_the_fit_reports_figures_with_intervals_around_them():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(40), np.ones(60)].astype(int)
    p = np.where(y == 1, rng.beta(6, 2, 100), rng.beta(2, 5, 100))
    fit = fit_site_labels(p, y, 0.95)
    assert fit.n == {"NORMAL": 40, "PNEUMONIA": 60}
    assert fit.sensitivity_interval[0] <= fit.sensitivity <= fit.sensitivity_interval[1]
    assert fit.specificity_interval[0] <= fit.specificity <= fit.specificity_interval[1]
    q = rescale(p, fit.scale)
    assert np.mean(q[y == 1] >= fit.threshold) == pytest.approx(fit.sensitivity)


def test_the_engines_logit_scale_is_the_binary_rescale():
    p = np.array([0.01, 0.3, 0.5, 0.9])
    got = LogitScale(1.7).apply(np.column_stack([1 - p, p]))
    assert np.allclose(got[:, 1], rescale(p, 1.7)) and np.allclose(got.sum(axis=1), 1)
