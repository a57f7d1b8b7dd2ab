"""The answer for one image, and prediction files (CSV or JSON lines) written atomically.

Nothing here imports torch: every engine (fastai/torch, onnxruntime) returns `Prediction`s.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..fileio import atomic_path

OUTPUT_COLUMNS = (
    "file",
    "probability",
    "prediction",
    "prediction_argmax",
    "ood",
    "ood_score",
    "ood_reason",
    "error",
)
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl")


def output_columns(classes: Sequence[str]) -> tuple[str, ...]:
    """The columns for a model's classes: one `p_CLASS` per class when there are more than two."""
    if len(classes) <= 2:
        return OUTPUT_COLUMNS
    return (*OUTPUT_COLUMNS[:2], *(f"p_{c}" for c in classes), *OUTPUT_COLUMNS[2:])


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image, or why there is none."""

    file: str | None  # the path as given; None for an in-memory image
    probability: float | None  # P(PNEUMONIA); None when the image could not be read
    label: str | None  # PNEUMONIA where probability >= threshold, else NORMAL
    label_argmax: str | None  # the most probable of the model's classes
    threshold: float  # the card's decision threshold, used for `label`
    error: str | None = None  # why the image could not be read
    ood: bool | None = None  # unlike the training X-rays (None: the export has no OOD check)
    ood_score: float | None = None  # the feature check's score (higher: less familiar)
    ood_reason: str | None = None  # why it was flagged
    class_probabilities: dict[str, float] | None = None  # every class's, for 3-class models

    @property
    def ok(self) -> bool:
        """Whether the image was read and predicted."""
        return self.error is None

    def row(self) -> dict[str, Any]:
        """The output row: `output_columns` mapped to values (None where there is no value)."""
        values = (self.file, self.probability, self.label, self.label_argmax, self.ood,
                  self.ood_score, self.ood_reason, self.error)  # fmt: skip
        row = dict(zip(OUTPUT_COLUMNS, values, strict=True))
        if self.class_probabilities is not None:
            head = {k: row[k] for k in OUTPUT_COLUMNS[:2]}
            probs = {f"p_{c}": p for c, p in self.class_probabilities.items()}
            return {**head, **probs, **{k: row[k] for k in OUTPUT_COLUMNS[2:]}}
        return row


def check_output_path(path: Path) -> None:
    """Refuse an output file whose format cannot be told from its suffix."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(
            f"Cannot tell the output format of {path}: name it .csv (comma-separated) or "
            ".jsonl (one JSON object per line)."
        )
    if path.is_dir():
        raise DataError(f"{path} is a folder; pass a file name ending in .csv or .jsonl.")


def _csv_cell(value: Any) -> Any:
    """CSV spelling: true/false for flags, empty for None (csv's own), the rest as is."""
    return str(value).lower() if isinstance(value, bool) else value


def write_predictions(preds: Iterable[Prediction], path: Path) -> None:
    """Write the rows to `path` as CSV (.csv) or JSON lines (.jsonl), atomically."""
    path = Path(path)
    check_output_path(path)
    rows = [p.row() for p in preds]
    columns = list(rows[0]) if rows else list(OUTPUT_COLUMNS)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)
        else:
            f.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)
