"""The answer for one image, and prediction files (CSV or JSON lines) written atomically.

Nothing here imports torch: every engine (fastai/torch, onnxruntime) returns `Prediction`s.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..fileio import atomic_path

OUTPUT_COLUMNS = ("file", "probability", "prediction", "prediction_argmax", "error")
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl")


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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(f, fieldnames=OUTPUT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)  # None becomes an empty cell
        else:
            f.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)
