"""An export's feature check at inference: its networks' scores, combined by one rule.

    check = OodCheck.of(card, card_path)  # None for an export without one
    flagged = check.scores(features_per_network) > check.threshold

A single model's score is its Mahalanobis score (`ood_scores.GaussianStats`), compared with its
card's threshold. An ensemble's is `combined_score`: the mean over its members of each member's
score divided by that member's own threshold (1: at the member's threshold, whatever the scale
of its features), compared with the ensemble card's threshold, which training chose on that
same scale with this same function (`training/ensemble.py`). Every engine (torch, onnxruntime) goes
through here. Statistics and member cards are sha256-checked before they are read; nothing here
imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..card import Card, EnsembleCard, verify_file
from ..errors import ModelFileError
from .members import member_cards
from .ood_scores import GaussianStats

COMBINED = "mean over the members of each member's score divided by its own threshold"


def combined_score(scores: Sequence[np.ndarray], scales: Sequence[float]) -> np.ndarray:
    """Per image, the mean over networks of score / scale (an ensemble: its members' thresholds)."""
    return np.mean(
        [np.asarray(s, dtype=np.float64) / k for s, k in zip(scores, scales, strict=True)], axis=0
    )


class OodCheck:
    """The export's feature check: its networks' Mahalanobis scores, combined, and a threshold."""

    def __init__(
        self,
        stats: Sequence[GaussianStats],  # one per network
        scales: Sequence[float],  # what each network's score is divided by (1 for a single model)
        threshold: float,  # combined scores above it are flagged
    ):
        self.stats, self.scales, self.threshold = list(stats), list(scales), threshold

    def scores(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """One score per image from each network's pooled features."""
        raw = [s.scores(f) for s, f in zip(self.stats, features, strict=True)]
        return combined_score(raw, self.scales)

    @classmethod
    def of(cls, card: Card, card_path: Path) -> OodCheck | None:
        """The check a card describes (sha256-checked cards and statistics), or None without one."""
        if card.ood is None:
            return None
        if not isinstance(card, EnsembleCard):
            stats = GaussianStats.load(verify_file(card, card_path, "ood"))
            return cls([stats], [1.0], card.ood.threshold)
        members = member_cards(card, card_path)
        lacking = [m.name for m, _ in members if m.ood is None]
        if lacking:
            raise ModelFileError(
                f"{card_path} has an OOD check but its member(s) {', '.join(lacking)} have none; "
                "re-run the ensemble's training to rebuild it."
            )
        stats = [GaussianStats.load(verify_file(m, p, "ood")) for m, p in members]
        return cls(stats, [m.ood.threshold for m, _ in members], card.ood.threshold)
