"""Carve a patient-disjoint test split out of a training folder, for honest held-out figures.

    pneumo-fastai data holdout ../shared/data/chest_xray --out data/holdout --pct 0.15

The result is a Kaggle-layout folder: `train/` holds the remaining images and `test/` a
class-stratified share of the patients, every patient wholly on one side. Files are linked
(symlinks), not copied, unless asked; the source folder is never modified.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..data.layout import class_counts, discover
from ..data.names import label_of, patient_id
from ..data.split import patient_split
from ..errors import DataError


@dataclass(frozen=True)
class Holdout:
    """What `carve_holdout` wrote."""

    root: Path  # the new dataset folder
    train: dict[str, int]  # images per class in train/
    test: dict[str, int]  # images per class in test/
    test_patients: int  # distinct patients in test/


def _place(src: Path, dest: Path, copy: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(src, dest)
    else:
        os.symlink(src.resolve(), dest)


def carve_holdout(
    path: Path | str,  # dataset folder in the Kaggle layout
    out: Path | str,  # new folder to create (must not exist or be empty)
    pct: float = 0.15,  # share of each class's images to hold out, whole patients at a time
    seed: int = 0,  # seed of the patient draw
    copy: bool = False,  # copy files instead of linking them
) -> Holdout:
    """Write `out/train` and a patient-disjoint, class-stratified `out/test` from `path`."""
    if not 0.0 < pct < 1.0:
        raise DataError(f"--pct must be between 0 and 1, got {pct}.")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already exists and is not empty; choose a new --out folder.")
    ds = discover(path)
    labels = [label_of(f) for f in ds.files]
    groups = [patient_id(f) for f in ds.files]
    keep, held = patient_split(labels, groups, pct, seed)
    placed: dict[str, list[Path]] = {"train": [], "test": []}
    for split, idxs in (("train", keep), ("test", held)):
        for i in idxs:
            f = ds.files[i]
            _place(f, dest := out / split / labels[i] / f.name, copy)
            placed[split].append(dest)
    counts = {split: class_counts(files) for split, files in placed.items()}
    return Holdout(out, counts["train"], counts["test"], len({groups[i] for i in held}))
