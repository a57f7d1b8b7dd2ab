"""The answer for one image, and prediction files (CSV or JSON lines) written atomically.

`write_predictions` is the one writer of prediction tables (`predict --out`, `serve`'s batch CSV,
`evaluate`'s predictions.csv). Its text is always valid UTF-8: a file name that is not (bytes
the file system allows) is written with its odd bytes as `\\xNN`. A CSV cell that starts with
`= + - @`, a tab or a carriage return gets a leading `'`, as OWASP's CSV-injection guidance
says, so that a spreadsheet shows a file named `=HYPERLINK(...)` instead of running it.
Nothing here imports torch: every engine (fastai/torch, onnxruntime) returns `Prediction`s.
"""

from __future__ import annotations

import csv
import json
import os
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
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may read as a formula


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


def utf8_text(value: Any) -> Any:
    """A string that encodes as UTF-8: undecodable bytes of a file name spelled `\\xNN`."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: os.fsdecode's spelling of undecodable bytes
        return os.fsencode(value).decode("utf-8", "backslashreplace")
    return value


def _csv_cell(value: Any) -> Any:
    """CSV spelling: true/false for flags, empty for None (csv's own), text defused (see the
    module docstring), the rest as is."""
    if isinstance(value, bool):
        return str(value).lower()
    value = utf8_text(value)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_predictions(
    rows: Iterable[Prediction | dict[str, Any]],  # `Prediction`s, or rows of one table's columns
    path: Path,
    fmt: str | None = None,  # csv or jsonl; None: from the suffix of `path` (checked)
) -> None:
    """Write the rows to `path` as CSV (.csv) or JSON lines (.jsonl), atomically."""
    path = Path(path)
    if fmt is None:
        check_output_path(path)
        fmt = path.suffix.lower().removeprefix(".")
    table = [r.row() if isinstance(r, Prediction) else r for r in rows]
    columns = list(table[0]) if table else list(OUTPUT_COLUMNS)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in table)
        else:
            f.writelines(
                json.dumps({k: utf8_text(v) for k, v in row.items()}, allow_nan=False) + "\n"
                for row in table
            )
