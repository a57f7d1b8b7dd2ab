"""Predict NORMAL vs PNEUMONIA for X-ray files, folders and globs with an exported model.

    pneumo-fastai predict exports/pneumo_resnet34.json scans/ "more/*.dcm" --out preds.csv

    from pneumo_fastai import load_model
    model = load_model("exports/pneumo_resnet34.json")
    model.predict("scan.dcm").label  # "PNEUMONIA" or "NORMAL" at the card's decision threshold
    preds = model.predict_batch(["a.png", "b.dcm"], bs=32)

Each file is decoded once, by `load_xray` at the model's input size in a small thread pool, and
the decoded images go through the export's own fastai pipeline (resize, normalisation, `tta`), so
the probabilities are those `ExportedModel.probabilities` gives for the same files. A file that
cannot be read gets a `Prediction` whose `error` says why, and the rest are still predicted. Files
are decoded and predicted a chunk of batches at a time, so memory stays bounded however many
files there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from fastprogress.fastprogress import progress_bar
from PIL import Image

from .inputs import Item, decode_chunks
from .loading import ExportedModel, load_export
from .results import Prediction

# Images are decoded and predicted a chunk at a time (the next chunk decodes meanwhile): at least
# 8 batches or 64 images, so that memory stays bounded and loader set-up is paid rarely.
BATCHES_PER_CHUNK = 8
MIN_CHUNK = 64


class XrayClassifier:
    """An exported model that predicts image files or in-memory PIL images."""

    def __init__(self, exported: ExportedModel):  # from `load_export`
        self.exported = exported

    @property
    def threshold(self) -> float:
        """Decision threshold on P(PNEUMONIA), chosen on validation data at training time."""
        return self.exported.threshold

    @property
    def classes(self) -> tuple[str, str]:
        """(negative, positive) class names from the model card."""
        negative, positive = self.exported.card.classes
        return negative, positive

    def _prediction(self, item: Item, p: float | None, error: str | None) -> Prediction:
        file = None if isinstance(item, Image.Image) else str(item)
        if p is None:
            return Prediction(file, None, None, None, self.threshold, error)
        negative, positive = self.classes
        label = positive if p >= self.threshold else negative
        label_argmax = positive if p >= 0.5 else negative
        return Prediction(file, p, label, label_argmax, self.threshold)

    def iter_predictions(
        self,
        items: Iterable[Item],  # paths and/or PIL images
        bs: int = 32,  # batch size
        tta: bool = False,  # average over fastai's test-time augmentation (random, unseeded)
    ) -> Iterator[Prediction]:
        """A `Prediction` for each item, in order, computed a chunk of batches at a time."""
        if bs < 1:
            raise ValueError(f"bs must be >= 1, got {bs}")
        size = self.exported.config.size
        for chunk in decode_chunks(items, size, max(bs * BATCHES_PER_CHUNK, MIN_CHUNK)):
            images = [r for _, r in chunk if isinstance(r, Image.Image)]
            probs = iter(())
            if images:
                dl = self.exported.dataloader(images, bs=bs, num_workers=0)
                with self.exported.learner.no_bar():
                    probs = iter(self.exported.probabilities(dl, tta))
            for item, result in chunk:
                if isinstance(result, Image.Image):
                    yield self._prediction(item, float(next(probs)), None)
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


def load_model(
    path: Path | str,  # export: NAME.json, NAME.pth, NAME.pkl, or a folder holding one card
    trust_pickle: bool = False,  # load the fastai pickle (runs its code) instead of the weights
    device: str = "auto",  # auto, cpu, cuda or cuda:N
    precision: str = "auto",  # auto (bf16 where the device runs it faster), fp32 or bf16
) -> XrayClassifier:
    """Load an export, after checking its sha256 against the model card, for prediction."""
    return XrayClassifier(
        load_export(path, trust_pickle=trust_pickle, device=device, precision=precision)
    )
