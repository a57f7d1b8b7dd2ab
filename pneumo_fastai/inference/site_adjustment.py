"""What an adapted export does to its calibrated probabilities: one rule, applied by every engine.

    adjustment = card_adjustment(card)          # None for an export that was not adapted
    probs = adjustment.apply(probs)             # (n, k), rows sum to 1

`adapt` (unlabelled) re-weights them to the site's class shares (`prior_shift.PriorShift`);
`adapt --labels` rescales their logits by the site's own temperature (`LogitScale`). Either way
the answer is decided with the card's `decision_threshold`. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..card import Card
from .prior_shift import PriorShift


@dataclass(frozen=True)
class LogitScale:
    """Probabilities with their log multiplied by `scale`, renormalised: softmax(scale * log p)."""

    scale: float

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """`probs` (n, k) at the site's temperature."""
        logp = self.scale * np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
        e = np.exp(logp - logp.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


Adjustment = PriorShift | LogitScale


def card_adjustment(card: Card) -> Adjustment | None:
    """The rule an adapted card asks every engine to apply (None: the card is not adapted)."""
    a = card.adaptation
    if a is None:
        return None
    if a.kind == "labels":
        return LogitScale(a.labels.scale)
    return PriorShift(
        np.array([a.source[c] for c in card.classes]), np.array([a.target[c] for c in card.classes])
    )
