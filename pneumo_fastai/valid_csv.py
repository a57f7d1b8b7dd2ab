"""`NAME.valid.csv`, an export's validation predictions, read through one checked reader.

    from pneumo_fastai.valid_csv import read_valid
    valid = read_valid(card, "exports/pneumo_resnet34.json")  # ModelFileError when it is wrong
    choose_threshold(valid.y, valid.probability, 0.95)

One row per validation image: `file` (relative to the card's data root), `label` (one of the
card's classes), `probability` (calibrated P(PNEUMONIA), 0..1) and, when the export has an OOD
check, `ood_score` (>= 0). Training writes it (`training/export.py`); every reader (evaluate's
re-chosen threshold, the ensemble's pooling, `data audit`, adapt's source shares, bench/) comes
through `read_valid`, which checks the file's sha256 against the card before reading it, then
its columns, labels and value ranges.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .card import CardBase, verify_file
from .config import CLASSES
from .errors import ModelFileError

COLUMNS = ("file", "label", "probability")
REDO = "Re-export the model."
OOD_COLUMN = "ood_score"  # a fourth column, for an export with an OOD check


@dataclass(frozen=True)
class ValidTable:
    """The rows of a `NAME.valid.csv`, as columns."""

    files: list[str]  # relative to the card's data root
    labels: list[str]  # class names
    probability: np.ndarray  # (n,) float64, calibrated P(PNEUMONIA)
    ood_score: np.ndarray | None = None  # (n,) float64, where the export has an OOD check

    @property
    def y(self) -> np.ndarray:
        """Labels as 0 (NORMAL) and 1 (PNEUMONIA: every other class)."""
        return np.array([int(label != CLASSES[0]) for label in self.labels], dtype=np.int64)

    def rows(self) -> list[tuple]:
        """(file, label, probability[, OOD score]) with Python floats, as the writer takes them."""
        columns = [self.probability, *([] if self.ood_score is None else [self.ood_score])]
        values = zip(*(c.tolist() for c in columns), strict=True)
        return [(f, label, *v) for f, label, v in zip(self.files, self.labels, values, strict=True)]

    def sorted(self) -> ValidTable:
        """The same rows ordered by file."""
        order = sorted(range(len(self.files)), key=self.files.__getitem__)
        return ValidTable(
            [self.files[i] for i in order],
            [self.labels[i] for i in order],
            self.probability[order],
            None if self.ood_score is None else self.ood_score[order],
        )


def _numbers(path: Path, column: str, cells: Sequence[str], low: float, high: float) -> np.ndarray:
    try:
        values = np.array([float(c) for c in cells], dtype=np.float64)
    except ValueError as e:
        raise ModelFileError(f"{path}: column {column} holds a non-number ({e}). {REDO}") from e
    bad = [i for i, v in enumerate(values.tolist()) if not (low <= v <= high and math.isfinite(v))]
    if bad:
        raise ModelFileError(
            f"{path}: column {column} has {len(bad)} value(s) outside {low:g}..{high:g} "
            f"(first on data row {bad[0] + 1}: {cells[bad[0]]!r}). {REDO}"
        )
    return values


def read_valid(card: CardBase, card_path: Path | str) -> ValidTable:
    """The card's validation predictions, after checking the file's sha256, columns and values."""
    if "valid" not in card.files:
        raise ModelFileError(
            f"Model card {card_path} lists no validation predictions (NAME.valid.csv); "
            "re-export the model with this version of pneumo-fastai."
        )
    path = verify_file(card, card_path, "valid")
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f)) or [[]]
    if tuple(header) not in (COLUMNS, (*COLUMNS, OOD_COLUMN)):
        raise ModelFileError(
            f"{path} has the columns {header}; expected {', '.join(COLUMNS)}[, {OOD_COLUMN}]. "
            + REDO
        )
    short = [i for i, row in enumerate(rows) if len(row) != len(header)]
    if not rows or short:
        what = "no rows" if not rows else f"a row of the wrong length (data row {short[0] + 1})"
        raise ModelFileError(f"{path} has {what}. {REDO}")
    files, labels, *numbers = (list(column) for column in zip(*rows, strict=True))
    unknown = sorted(set(labels) - set(card.classes))
    if unknown or not all(files):
        what = f"the labels {unknown}" if unknown else "a row without a file name"
        raise ModelFileError(
            f"{path} has {what}; its labels must be the card's classes "
            f"({', '.join(card.classes)}). {REDO}"
        )
    probability = _numbers(path, "probability", numbers[0], 0.0, 1.0)
    ood = _numbers(path, OOD_COLUMN, numbers[1], 0.0, math.inf) if len(numbers) == 2 else None
    return ValidTable(files, labels, probability, ood)
