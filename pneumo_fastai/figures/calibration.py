"""Temperature scaling (Guo et al. 2017): one scalar T so that softmax(logits / T) is calibrated.

    t = fit_temperature(valid_logits, valid_labels)     # on validation (or out-of-fold) logits
    p = softmax(test_logits, t)

Label smoothing keeps a model's probabilities away from 0 and 1, so its confident answers read
as less sure than they are (T < 1 sharpens them again). T is fitted by minimising the negative
log-likelihood on held-out logits; it does not change which class is the most probable. Pure
numpy and scipy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar

LOG_T_BOUNDS = (-3.0, 3.0)  # T between e^-3 and e^3


def softmax(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: ArrayLike, y: ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    p = softmax(logits, temperature)
    y = np.asarray(y, dtype=np.int64)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: ArrayLike, y: ArrayLike) -> float:
    """The temperature minimising the NLL of `y` (bounded search over log T)."""
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(y) or len(y) == 0:
        raise ValueError(f"need (n, k) logits and n labels; got {logits.shape} and {y.shape}")
    result = minimize_scalar(
        lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded"
    )
    return float(np.exp(result.x))
