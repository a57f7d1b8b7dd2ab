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

import csv
import glob
import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastprogress.fastprogress import progress_bar
from PIL import Image

from .data import default_workers
from .errors import DataError
from .export import staged_files
from .images import PREDICT_SUFFIXES, is_dicom, load_xray, to_gray8
from .loading import ExportedModel, load_export

Item = Path | str | Image.Image  # what can be predicted: a file path or an in-memory image
OUTPUT_COLUMNS = ("file", "probability", "prediction", "prediction_argmax", "error")
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl")
# Images are decoded and predicted a chunk at a time (the next chunk decodes meanwhile): at least
# 8 batches or 64 images, so that memory stays bounded and loader set-up is paid rarely.
BATCHES_PER_CHUNK = 8
MIN_CHUNK = 64
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image, or why there is none."""

    file: str | None  # the path as given; None for an in-memory image
    probability: float | None  # P(PNEUMONIA); None when the image could not be read
    label: str | None  # class at the decision threshold: PNEUMONIA where probability >= threshold
    label_argmax: str | None  # class with the higher probability (PNEUMONIA where >= 0.5)
    threshold: float  # the card's decision threshold, used for `label`
    error: str | None = None  # why the image could not be read

    @property
    def ok(self) -> bool:
        """Whether the image was read and predicted."""
        return self.error is None

    def row(self) -> dict[str, Any]:
        """The output row: OUTPUT_COLUMNS mapped to values (None where there is no value)."""
        values = (self.file, self.probability, self.label, self.label_argmax, self.error)
        return dict(zip(OUTPUT_COLUMNS, values, strict=True))


def _read(item: Item, size: int) -> Image.Image | str:
    """`item` as an 8-bit gray image of about `size` px (see `load_xray`), or why it cannot be."""
    try:
        if isinstance(item, Image.Image):
            return to_gray8(item, size)
        return load_xray(item, draft=size)
    except DataError as e:  # the file column already names the file
        return str(e).removeprefix(f"{Path(item)}: ")
    except Exception as e:  # one odd file must not end a run over thousands
        return f"unexpected {type(e).__name__} while reading the image: {e}"


def _chunks(items: Iterable[Item], size: int, n: int) -> Iterator[list[tuple[Item, Any]]]:
    """(item, image or error) in chunks of `n`; the next chunk decodes while one is predicted."""
    pending: list[tuple[Item, Future]] = []
    with ThreadPoolExecutor(max(1, default_workers())) as pool:
        for item in items:
            pending.append((item, pool.submit(_read, item, size)))
            if len(pending) == 2 * n:
                yield [(x, f.result()) for x, f in pending[:n]]
                pending = pending[n:]
        while pending:
            yield [(x, f.result()) for x, f in pending[:n]]
            pending = pending[n:]


class XrayClassifier:
    """An exported model that predicts image files or in-memory PIL images."""

    def __init__(self, exported: ExportedModel):  # from `load_export`
        self.exported = exported
        # `learner_for` replaces the pickled Learner's loaders: keep the originals for `test_dl`

    @property
    def threshold(self) -> float:
        """Decision threshold on P(PNEUMONIA), chosen on validation data at training time."""
        return self.exported.threshold

    @property
    def classes(self) -> tuple[str, str]:
        """(negative, positive) class names from the model card."""
        negative, positive = self.exported.card["classes"]
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
        for chunk in _chunks(items, size, max(bs * BATCHES_PER_CHUNK, MIN_CHUNK)):
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
) -> XrayClassifier:
    """Load an export, after checking its sha256 against the model card, for prediction."""
    return XrayClassifier(load_export(path, trust_pickle=trust_pickle, device=device))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, with a PREDICT_SUFFIXES suffix or DICOM content."""
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not _hidden(p, folder)
        and (p.suffix.lower() in PREDICT_SUFFIXES or is_dicom(p))
    ]


def expand_inputs(inputs: Iterable[Path | str]) -> list[Path]:
    """Files to predict from files, folders (recursive) and glob patterns; in order, no repeats.

    A file named explicitly or matched by a glob is kept whatever its suffix (as a shell would
    pass it); folders contribute only images (see `find_images`). `**` matches nested folders.
    """
    found: list[Path] = []
    missing: list[str] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.exists():
            hits = [path]
        elif _GLOB_CHARS & set(str(raw)):
            hits = [Path(h) for h in sorted(glob.glob(str(path), recursive=True))]
        else:
            hits = []
        if not hits:
            missing.append(str(raw))
        for hit in hits:
            found += find_images(hit) if hit.is_dir() else [hit]
    if missing:
        raise DataError(
            f"No such file or folder, and no file matches: {', '.join(missing)}. Check the paths "
            "(quote glob patterns such as 'scans/*.dcm' if the shell mangles them)."
        )
    if not found:
        raise DataError(
            "No images found in the given folders. Images need one of the suffixes "
            f"{', '.join(sorted(PREDICT_SUFFIXES))} or DICOM content."
        )
    return list(dict.fromkeys(found))


def check_output_path(path: Path) -> None:
    """Refuse an output file whose format cannot be told from its suffix."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(
            f"Cannot tell the output format of {path}: name it .csv (comma-separated) or "
            ".jsonl (one JSON object per line)."
        )
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass a file name ending in .csv or .jsonl.")


def write_predictions(preds: Iterable[Prediction], path: Path) -> None:
    """Write OUTPUT_COLUMNS rows to `path` as CSV (.csv) or JSON lines (.jsonl), atomically."""
    path = Path(path)
    check_output_path(path)
    rows = [p.row() for p in preds]
    with staged_files(path.parent, [path]) as (tmp,), open(tmp, "w", newline="") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(f, fieldnames=OUTPUT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)  # None becomes an empty cell
        else:
            f.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)
