"""Predict NORMAL vs PNEUMONIA for X-ray files, folders and globs with an exported model.

    pneumo-fastai predict exports/pneumo_resnet34.json scans/ "more/*.dcm" --out preds.csv

    from pneumo_fastai import load_model
    model = load_model("exports/pneumo_resnet34.json")         # fastai/torch
    model = load_model("exports/pneumo_resnet34.json", engine="onnx")   # onnxruntime, no torch
    model.predict("scan.dcm").label  # "PNEUMONIA" or "NORMAL" at the card's decision threshold
    preds = model.predict_batch(["a.png", "b.dcm"], bs=32)

`Classifier` is what every engine shares: each file is decoded once (`inputs.read_item`, in a
small thread pool, a chunk of batches at a time so that memory stays bounded), the engine turns
the decoded images into class probabilities (and, where the export has an OOD check, pooled
features), and the answers become `Prediction`s: P(PNEUMONIA), the decision at the card's
threshold and at argmax, the OOD flag. A file that cannot be read gets a `Prediction` whose
`error` says why, and the rest are still predicted. This module imports neither torch nor
fastai: the torch engine's loader is imported when a torch model is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from fastprogress.fastprogress import progress_bar
from PIL import Image

from ..card import Card, EnsembleCard, verify_file
from ..errors import PneumoError
from .inputs import Decoded, Item, decode_chunks
from .ood import GaussianStats
from .results import Prediction

if TYPE_CHECKING:
    from .loading import ExportedModel

Engine = Literal["torch", "onnx"]
OodAnswer = tuple[bool | None, float | None, str | None]  # flagged, score, reason
# Images are decoded and predicted a chunk at a time (the next chunk decodes meanwhile): at least
# 8 batches or 64 images, so that memory stays bounded and loader set-up is paid rarely.
BATCHES_PER_CHUNK = 8
MIN_CHUNK = 64


class OodCheck:
    """The export's feature check: the mean over its networks of their Mahalanobis scores."""

    def __init__(self, stats: Sequence[GaussianStats], threshold: float):
        self.stats, self.threshold = list(stats), threshold

    def scores(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """One score per image from each network's pooled features."""
        return np.mean([s.scores(f) for s, f in zip(self.stats, features, strict=True)], axis=0)

    @classmethod
    def of(cls, card: Card, card_path: Path) -> OodCheck | None:
        """The check a card describes (sha256-checked statistics), or None without one."""
        if card.ood is None:
            return None
        if isinstance(card, EnsembleCard):
            from ..card import read_card

            paths = [card_path.parent / m.card for m in card.members]
            members = [(read_card(p), p) for p in paths]
        else:
            members = [(card, card_path)]
        stats = [GaussianStats.load(verify_file(c, p, "ood")) for c, p in members]
        return cls(stats, card.ood.threshold)


class Classifier:
    """An export that predicts files and in-memory images; engines supply `outputs`."""

    def __init__(self, card: Card, card_path: Path, size: int):
        self.card, self.card_path, self.size = card, Path(card_path), size
        self.ood = OodCheck.of(card, self.card_path)

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
        """(flagged, score, reason) of one decoded image; all None without an OOD check."""
        if self.ood is None:
            return None, None, None
        if decoded.problem is not None:
            return True, score, decoded.problem
        if score > self.ood.threshold:
            limit = self.ood.threshold
            return True, score, f"features unlike the training X-rays ({score:.0f} > {limit:.0f})"
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
        checks = self.ood is not None
        n = max(bs * BATCHES_PER_CHUNK, MIN_CHUNK)
        for chunk in decode_chunks(items, self.size, n, checks=checks):
            decoded = [r for _, r in chunk if isinstance(r, Decoded)]
            probs, scores = iter(()), iter(())
            if decoded:
                p, feats = self.outputs([d.image for d in decoded], bs, tta, checks)
                probs = iter(p)
                scores = iter(self.ood.scores(feats) if checks else [None] * len(decoded))
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
        progress: bool = False,  # show a fastprogress bar (works in notebooks and terminals)
    ) -> list[Prediction]:
        """A `Prediction` for each item, in order; unreadable files get one with `error` set."""
        preds = self.iter_predictions(items, bs=bs, tta=tta)
        if progress:
            preds = progress_bar(preds, total=len(items))
        return list(preds)

    def predict(self, item: Item, tta: bool = False) -> Prediction:
        """The `Prediction` for one file or PIL image."""
        return self.predict_batch([item], bs=1, tta=tta)[0]


class XrayClassifier(Classifier):
    """The fastai/torch engine: the export's own fastai pipeline and network."""

    def __init__(self, exported: ExportedModel):  # from `load_export`
        super().__init__(exported.card, exported.card_path, exported.config.size)
        self.exported = exported

    def outputs(
        self, images: list[Image.Image], bs: int, tta: bool, features: bool
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        dl = self.exported.dataloader(images, bs=bs, num_workers=0)
        with self.exported.learner.no_bar():
            return self.exported.outputs(dl, tta=tta, features=features)


def load_model(
    path: Path | str,  # export: NAME.json, NAME.safetensors, NAME.pkl, or a folder with one card
    trust_pickle: bool = False,  # torch: load the fastai pickle (runs its code) instead
    device: str = "auto",  # torch: auto, cpu, cuda or cuda:N
    precision: str = "auto",  # torch: auto (bf16 where the device runs it faster), fp32, bf16
    engine: Engine = "torch",  # torch (fastai), or onnx (onnxruntime, after `export onnx`)
    threads: int | None = None,  # onnx: intra-op threads (default: onnxruntime's)
) -> Classifier:
    """Load an export, after checking its files' sha256 against the model card, for prediction."""
    if engine == "onnx":
        if trust_pickle:
            raise PneumoError("--trust-pickle loads the fastai pickle; it has no ONNX engine.")
        from .onnx_engine import load_onnx

        return load_onnx(path, threads=threads)
    if engine != "torch":
        raise PneumoError(f"Unknown engine {engine!r}: use torch or onnx.")
    from .loading import load_export

    return XrayClassifier(
        load_export(path, trust_pickle=trust_pickle, device=device, precision=precision)
    )
