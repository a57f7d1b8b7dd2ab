"""The Kaggle folder layout, known in one place: roots, splits, class folders, counts.

    root/                     (or root/chest_xray/, as Kaggle's zip unpacks)
      train/NORMAL/*.jpeg     train/PNEUMONIA/*.jpeg
      val/...                 optional; merged into train for training
      test/...                optional; never read by training

    from pneumo_fastai.data.layout import discover, list_split
    ds = discover("../shared/data/chest_xray")   # train + val images, sorted
    listing = list_split(ds.root / "test")       # images per class, other files, missing classes

Listing never raises for what a folder holds; each caller decides what is fatal for its purpose
(`require_images` for training and evaluation, warnings for `data check`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CLASSES
from ..errors import DataError
from .formats import RASTER_SUFFIXES
from .names import label_of

SPLITS: tuple[str, ...] = ("train", "val", "test")
TRAIN_SPLITS: tuple[str, ...] = ("train", "val")  # what training reads; test is never read
KAGGLE_FOLDER = "chest_xray"  # the folder Kaggle's zip unpacks to
IMAGE_KINDS = "/".join(sorted(RASTER_SUFFIXES))  # for messages: .jpeg/.jpg/.png


def class_counts(
    files: Iterable[Path | str],
    classes: Sequence[str] = CLASSES,
    label: Callable[[Path | str], str | None] = label_of,  # e.g. `names.subtype_of`
) -> dict[str, int]:
    """Number of files per class (by parent folder), every class listed, in class order."""
    counts = Counter(label(f) for f in files)
    return {c: counts.get(c, 0) for c in classes}


def list_class_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files (by case-insensitive suffix) and every other file, recursively, sorted."""
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            continue
        (images if p.suffix.lower() in RASTER_SUFFIXES else others).append(p)
    return images, others


@dataclass(frozen=True)
class SplitListing:
    """What one split folder (train/, val/, test/ or any folder of class folders) holds."""

    folder: Path
    images: dict[str, list[Path]] = field(default_factory=dict)  # class -> images, recursive
    others: list[Path] = field(default_factory=list)  # files in class folders that are not images
    missing: tuple[str, ...] = ()  # class folders that do not exist
    extra_dirs: tuple[str, ...] = ()  # folders beside the class folders (ignored)

    def all_images(self) -> list[Path]:
        """Every image, class by class."""
        return [p for cls in self.images for p in self.images[cls]]

    def counts(self) -> dict[str, int]:
        """Images per class (0 for a missing class folder)."""
        return {cls: len(self.images.get(cls, [])) for cls in CLASSES}

    def require_images(self, purpose: str) -> None:
        """Raise `DataError` when a class folder is missing or holds no image."""
        for cls in CLASSES:
            class_dir = self.folder / cls
            if cls in self.missing:
                raise DataError(
                    f"{class_dir} is missing. Each split folder needs one sub-folder per class: "
                    f"{', '.join(CLASSES)}."
                )
            if not self.images.get(cls):
                raise DataError(
                    f"{class_dir} holds no {IMAGE_KINDS} images. Every class needs images "
                    f"{purpose}."
                )


def list_split(folder: Path) -> SplitListing:
    """The class folders of `folder`: their images, other files, and what is missing or extra."""
    folder = Path(folder)
    images: dict[str, list[Path]] = {}
    others: list[Path] = []
    missing = []
    for cls in CLASSES:
        if not (folder / cls).is_dir():
            missing.append(cls)
            continue
        images[cls], rest = list_class_folder(folder / cls)
        others += rest
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in CLASSES)
    return SplitListing(folder, images, others, tuple(missing), tuple(extra))


def present_splits(root: Path) -> list[str]:
    """The split folders (train, val, test) that exist under `root`, in that order."""
    return [s for s in SPLITS if (Path(root) / s).is_dir()]


def _holder(path: Path, split: str) -> Path | None:
    """`path` or its `chest_xray/` child, whichever holds `split/`."""
    for candidate in (path, path / KAGGLE_FOLDER):
        if (candidate / split).is_dir():
            return candidate
    return None


def _contents(path: Path) -> str:
    return ", ".join(sorted(p.name for p in path.iterdir() if p.is_dir())) or "nothing"


def resolve_root(path: Path | str) -> Path:
    """The folder holding `train/`: `path` itself or its `chest_xray/` child (Kaggle's zip)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"Dataset folder {path} does not exist. Pass --data (or set PNEUMO_DATA) to the folder "
            "that holds train/NORMAL and train/PNEUMONIA, or fetch it with `pneumo-fastai data "
            "download`."
        )
    if not path.is_dir():
        raise DataError(f"Dataset path {path} is a file, not a folder. Pass the dataset folder.")
    root = _holder(path, "train")
    if root is None:
        raise DataError(
            f"Dataset folder {path} has no train/ folder (it holds: {_contents(path)}). "
            "Expected the Kaggle layout: train/{NORMAL,PNEUMONIA}/, optional val/ and test/."
        )
    return root


def find_test_folder(data: Path | str | None = None, test: Path | str | None = None) -> Path:
    """The folder to evaluate: `test` itself, else `data`'s `test/` split (or `chest_xray/test`)."""
    if test is not None:
        folder = Path(test).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"Test folder {folder} does not exist or is not a folder. Pass --test DIR with "
                f"one sub-folder per class: {', '.join(CLASSES)}."
            )
        return folder
    if data is None:
        raise DataError(
            "No test data given: pass --data PATH (its test/ split is evaluated), set "
            "PNEUMO_DATA, or pass --test DIR."
        )
    path = Path(data).expanduser()
    if not path.is_dir():
        raise DataError(f"Dataset folder {path} does not exist or is not a folder.")
    root = _holder(path, "test")
    if root is None:
        raise DataError(
            f"Dataset folder {path} has no test/ split (it holds: {_contents(path)}). "
            "Pass the dataset root that holds test/NORMAL and test/PNEUMONIA, or --test DIR."
        )
    return root / "test"


@dataclass(frozen=True)
class DatasetFiles:
    """The training images (train + val merged) of a dataset root, and what was skipped."""

    root: Path  # folder that holds train/ (and optionally val/, test/)
    files: tuple[Path, ...]  # image files, sorted by their path relative to root
    skipped: tuple[Path, ...]  # files in class folders that are not images we read

    def labels(self) -> list[str]:
        """Class name of each file (its parent folder)."""
        return [label_of(f) for f in self.files]

    def counts(self) -> dict[str, int]:
        """Number of images per class."""
        return class_counts(self.files)


def relative_name(path: Path, root: Path) -> str:
    """`path` relative to `root`, with forward slashes: names a file on any machine."""
    return Path(path).relative_to(root).as_posix()


def discover(path: Path | str) -> DatasetFiles:
    """Find the training images: `train/` merged with `val/` where present; `test/` is left out."""
    root = resolve_root(path)
    files: list[Path] = []
    skipped: list[Path] = []
    for split in TRAIN_SPLITS:
        if split == "val" and not (root / split).is_dir():
            continue
        listing = list_split(root / split)
        listing.require_images("to train")
        files += listing.all_images()
        skipped += listing.others
    files.sort(key=lambda p: relative_name(p, root))
    return DatasetFiles(root=root, files=tuple(files), skipped=tuple(skipped))


def fingerprint(files: Sequence[Path], root: Path) -> str:
    """sha256 of the sorted root-relative paths: names a file list on any machine."""
    names = sorted(relative_name(f, root) for f in files)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()
