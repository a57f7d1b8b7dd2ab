"""Temperature scaling on logits with a known miscalibration."""

import numpy as np
import pytest

from pneumo_fastai.figures.calibration import fit_temperature, nll, softmax


def _sample(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / true_t)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 2))
    p = softmax(logits, true_t)
    y = (rng.random(n) < p[:, 1]).astype(int)
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_made_the_labels(true_t):
    logits, y = _sample(20_000, true_t)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.08)
    assert nll(logits, y, t) <= nll(logits, y, 1.0) + 1e-9


def test_softmax_rows_sum_to_one_and_temperature_keeps_the_ranking():
    logits = np.array([[0.0, 2.0], [1.0, -1.0], [3.0, 3.0]])
    for t in (0.3, 1.0, 4.0):
        p = softmax(logits, t)
        assert np.allclose(p.sum(axis=1), 1.0)
        assert (p.argmax(axis=1)[:2] == [1, 0]).all()
    assert softmax(logits, 0.3)[0, 1] > softmax(logits, 4.0)[0, 1]


def test_fit_temperature_refuses_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros(3), np.zeros(3))
