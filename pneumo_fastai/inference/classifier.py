"""What every engine shares: files and images in, `Prediction`s out, the OOD flag on each.

    from pneumo_fastai import load_model  # a Classifier: the torch engine or the ONNX one
    preds = load_model("exports/pneumo_resnet34.json").predict_batch(["a.png", "b.dcm"], bs=32)

Each file is decoded once (`inputs.read_item`, in a small thread pool, a chunk of batches at a
time so that memory stays bounded), the engine (`outputs`) turns the decoded images into class
probabilities (and, where the export has an OOD check, pooled features), an adapted export
adjusts them to its site (`site_adjustment.card_adjustment`), and the answers become
`Prediction`s: P(PNEUMONIA), the decision at the card's threshold and at argmax, the OOD flag
(`ood_check.OodCheck`). A file that cannot be read gets a `Prediction` whose `error` says why,
and the rest are still predicted. Nothing here imports torch, fastai or onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..card import Card
from ..progress import track
from .inputs import Decoded, Item, decode_chunks
from .ood_check import OodCheck
from .results import Prediction
from .site_adjustment import card_adjustment

OodAnswer = tuple[bool | None, float | None, str | None]  # flagged, score, reason
# Images are decoded and predicted a chunk at a time (the next chunk decodes meanwhile): at least
# 8 batches or 64 images, so that memory stays bounded and loader set-up is paid rarely.
BATCHES_PER_CHUNK = 8
MIN_CHUNK = 64


class Classifier:
    """An export that predicts files and in-memory images; engines supply `outputs`."""

    def __init__(self, card: Card, card_path: Path, size: int):
        self.card, self.card_path, self.size = card, Path(card_path), size
        self.ood = OodCheck.of(card, self.card_path)
        self.shift = card_adjustment(card)  # None: the calibrated probabilities as they are

    @property
    def threshold(self) -> float:
        """Decision threshold on P(PNEUMONIA), chosen on validation data at training time."""
        return self.card.decision_threshold.value

    @property
    def classes(self) -> tuple[str, str]:
        """(negative, positive) of the binary decision: NORMAL and PNEUMONIA."""
        return self.card.classes[0], self.card.positive_class

    def outputs(
        self, images: list[Image.Image], bs: int, tta: bool, features: bool
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Class probabilities (n, n_classes) and, with `features`, pooled features per network."""
        raise NotImplementedError

    def _prediction(
        self, item: Item, probs: np.ndarray | None, error: str | None,
        ood: OodAnswer = (None, None, None),
    ) -> Prediction:  # fmt: skip
        file = None if isinstance(item, Image.Image) else str(item)
        many = len(self.card.classes) > 2
        if probs is None:
            per_class = dict.fromkeys(self.card.classes) if many else None
            return Prediction(file, None, None, None, self.threshold, error, None, None, None,
                              per_class)  # fmt: skip
        negative, positive = self.classes
        p = float(probs[1:].sum())
        label = positive if p >= self.threshold else negative
        if many:
            argmax = self.card.classes[int(np.argmax(probs))]
        else:
            argmax = positive if p >= 0.5 else negative
        per_class = dict(zip(self.card.classes, map(float, probs), strict=True)) if many else None
        return Prediction(file, p, label, argmax, self.threshold, None, *ood, per_class)

    def _ood(self, decoded: Decoded, score: float | None) -> OodAnswer:
        """(flagged, score, reason) of one decoded image. The input checks (transparency, size,
        colour) run for every export; without an OOD check a clean image's answer is all None."""
        if decoded.problem is not None:
            return True, score, decoded.problem
        if self.ood is None:
            return None, None, None
        if score > self.ood.threshold:
            limit = self.ood.threshold
            return True, score, f"features unlike the training X-rays ({score:.4g} > {limit:.4g})"
        return False, score, None

    def iter_predictions(
        self,
        items: Iterable[Item],  # paths and/or PIL images
        bs: int = 32,  # batch size
        tta: bool = False,  # average over fastai's test-time augmentation (random, unseeded)
    ) -> Iterator[Prediction]:
        """A `Prediction` for each item, in order, computed a chunk of batches at a time."""
        if bs < 1:
            raise ValueError(f"bs must be >= 1, got {bs}")
        features = self.ood is not None
        n = max(bs * BATCHES_PER_CHUNK, MIN_CHUNK)
        for chunk in decode_chunks(items, self.size, n):
            decoded = [r for _, r in chunk if isinstance(r, Decoded)]
            probs, scores = iter(()), iter(())
            if decoded:
                p, feats = self.outputs([d.image for d in decoded], bs, tta, features)
                probs = iter(p if self.shift is None else self.shift.apply(p))
                scores = iter(self.ood.scores(feats) if features else [None] * len(decoded))
            for item, result in chunk:
                if isinstance(result, Decoded):
                    ood = self._ood(result, next(scores))
                    yield self._prediction(item, next(probs), None, ood)
                else:
                    yield self._prediction(item, None, result)

    def predict_batch(
        self,
        items: Sequence[Item],  # paths and/or PIL images
        bs: int = 32,  # batch size
        tta: bool = False,  # average over fastai's test-time augmentation (random, unseeded)
        progress: bool = False,  # show a progress bar
    ) -> list[Prediction]:
        """A `Prediction` for each item, in order; unreadable files get one with `error` set."""
        preds = self.iter_predictions(items, bs=bs, tta=tta)
        return list(track(preds, len(items), "Predicting", enabled=progress))

    def predict(self, item: Item, tta: bool = False) -> Prediction:
        """The `Prediction` for one file or PIL image."""
        return self.predict_batch([item], bs=1, tta=tta)[0]
