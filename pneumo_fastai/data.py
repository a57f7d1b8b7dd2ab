"""Dataset discovery, patient-aware seeded splitting, and the fastai `DataBlock`.

from pneumo_fastai.data import discover, build_dataloaders
ds = discover("../shared/data/chest_xray")
dls = build_dataloaders(ds.files, TrainConfig(data=ds.root))
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import IntToFloatTensor, Normalize, parent_label
from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
from fastai.vision.core import PILImage
from fasttransform import Transform
from PIL import Image

from .cache import fill_cache, should_cache
from .config import CLASSES, IMAGENET_MEAN, IMAGENET_STD, SplitMode, TrainConfig
from .errors import DataError
from .images import RASTER_SUFFIXES, load_xray

TRAIN_SPLITS: tuple[str, ...] = ("train", "val")

_PATIENT_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
    re.compile(r"^(NORMAL2-IM-\d+)-\d+", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-\d+", re.IGNORECASE),
)


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
        counts = Counter(self.labels())
        return {c: counts.get(c, 0) for c in CLASSES}


def label_of(path: Path | str) -> str:
    """Class of an image: the name of the folder it sits in."""
    return parent_label(path)


def patient_id(path: Path | str) -> str:
    """Patient id parsed from a Kermany file name; the file stem when the name has none."""
    stem = Path(path).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


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
    for candidate in (path, path / "chest_xray"):
        if (candidate / "train").is_dir():
            return candidate
    found = sorted(p.name for p in path.iterdir() if p.is_dir())
    raise DataError(
        f"Dataset folder {path} has no train/ folder (it holds: {', '.join(found) or 'nothing'}). "
        "Expected the Kaggle layout: train/{NORMAL,PNEUMONIA}/, optional val/ and test/."
    )


def list_class_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files (by case-insensitive extension) and everything else, recursively."""
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            continue
        (images if p.suffix.lower() in RASTER_SUFFIXES else others).append(p)
    return images, others


def list_split(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    """Images and skipped files of one split folder (`train`, `val` or `test`)."""
    folder = root / split
    images: list[Path] = []
    skipped: list[Path] = []
    for cls in CLASSES:
        class_dir = folder / cls
        if not class_dir.is_dir():
            raise DataError(
                f"{class_dir} is missing. Each split folder needs one sub-folder per class: "
                f"{', '.join(CLASSES)}."
            )
        found, others = list_class_folder(class_dir)
        if not found:
            raise DataError(
                f"{class_dir} holds no .jpeg/.jpg/.png images. Every class needs images to train."
            )
        images += found
        skipped += others
    return images, skipped


def discover(path: Path | str) -> DatasetFiles:
    """Find the training images: `train/` merged with `val/` where present; `test/` is left out."""
    root = resolve_root(path)
    files: list[Path] = []
    skipped: list[Path] = []
    for split in TRAIN_SPLITS:
        if split == "val" and not (root / split).is_dir():
            continue
        found, others = list_split(root, split)
        files += found
        skipped += others
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return DatasetFiles(root=root, files=tuple(files), skipped=tuple(skipped))


def find_unreadable(files: Sequence[Path]) -> list[tuple[Path, str]]:
    """Files that are empty or whose header PIL cannot parse, with the reason (cheap scan)."""
    bad = []
    for f in files:
        try:
            if os.path.getsize(f) == 0:
                bad.append((f, "empty file"))
                continue
            with Image.open(f) as img:
                img.size  # noqa: B018 - parsing the header is the check
        except Exception as e:  # PIL raises many types for broken headers
            bad.append((f, f"{type(e).__name__}: {e}"))
    return bad


def limit_per_class(files: Sequence[Path], limit: int, seed: int) -> list[Path]:
    """A seeded sample of at most `limit` files per class, in the original order."""
    rng = np.random.RandomState(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(files):
        by_class[label_of(f)].append(i)
    keep: set[int] = set()
    for idxs in by_class.values():
        keep.update(int(i) for i in rng.permutation(idxs)[:limit])
    return [f for i, f in enumerate(files) if i in keep]


def image_split(n: int, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """Reference split: a seeded permutation of all items, the first (1 - valid_pct) train."""
    perm = np.random.RandomState(seed).permutation(n)
    cut = int(n * (1 - valid_pct))
    return sorted(perm[:cut].tolist()), sorted(perm[cut:].tolist())


def patient_split(
    labels: Sequence[str], groups: Sequence[str], valid_pct: float, seed: int
) -> tuple[list[int], list[int]]:
    """Patient-grouped split, stratified by class: each group lands wholly on one side."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    group_label = {
        g: Counter(labels[i] for i in idxs).most_common(1)[0][0] for g, idxs in members.items()
    }
    rng = np.random.RandomState(seed)
    valid: list[int] = []
    for cls in sorted(set(labels)):
        cls_groups = sorted(g for g, lab in group_label.items() if lab == cls)
        target = valid_pct * sum(len(members[g]) for g in cls_groups)
        taken = 0
        for j in rng.permutation(len(cls_groups)):
            if taken >= target:
                break
            idxs = members[cls_groups[j]]
            valid += idxs
            taken += len(idxs)
    valid_set = set(valid)
    return [i for i in range(len(labels)) if i not in valid_set], sorted(valid)


class SeededSplitter:
    """Picklable fastai splitter: `patient` (grouped, stratified) or `image` (reference) mode."""

    def __init__(self, valid_pct: float = 0.3, seed: int = 42, mode: SplitMode = "patient"):
        self.valid_pct, self.seed, self.mode = valid_pct, seed, mode

    def __call__(self, items: Sequence[Path]) -> tuple[list[int], list[int]]:
        if self.mode == "image":
            return image_split(len(items), self.valid_pct, self.seed)
        labels = [label_of(p) for p in items]
        groups = [patient_id(p) for p in items]
        return patient_split(labels, groups, self.valid_pct, self.seed)


def fingerprint(files: Sequence[Path], root: Path) -> str:
    """sha256 of the sorted root-relative paths: names a file list on any machine."""
    names = sorted(Path(f).relative_to(root).as_posix() for f in files)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


class XrayImage(PILImage):
    """A chest X-ray as fastai's 3-channel image type, shown in gray."""

    _show_args: ClassVar[dict[str, str]] = {"cmap": "gray"}


class LoadXray(Transform):
    """Open a file robustly as an `XrayImage` (grayscale copied to 3 channels)."""

    def __init__(
        self,
        draft: int | None = None,  # JPEG draft-decode target size, in pixels
        cache: Mapping[str, Image.Image] | None = None,  # decoded images by path (training only)
    ):
        super().__init__()
        self.draft, self.cache = draft, cache

    def encodes(self, x) -> XrayImage:
        if isinstance(x, Image.Image):
            img = x
        elif getattr(self, "cache", None) and str(x) in self.cache:  # absent in older pickles
            img = self.cache[str(x)]
        else:
            img = load_xray(x, self.draft)
        return XrayImage(img.convert("L").convert("RGB"))

    def __getstate__(self) -> dict:
        # the cache holds training images: never pickle it into an export
        return {**self.__dict__, "cache": None}


def uses_cache(dls: DataLoaders) -> bool:
    """Whether the loaders read decoded images from RAM."""
    loaders = [t for t in dls.train_ds.tls[0].tfms.fs if isinstance(t, LoadXray)]
    return any(t.cache is not None for t in loaders)


def xray_block(
    draft: int | None = None, cache: Mapping[str, Image.Image] | None = None
) -> TransformBlock:
    """Like fastai's `ImageBlock`, but opening files with `LoadXray`."""
    return TransformBlock(type_tfms=LoadXray(draft, cache), batch_tfms=IntToFloatTensor)


def item_transforms(config: TrainConfig) -> list:
    """Per-image transforms: squash to `size` x `size` (the whole field of view is kept)."""
    return [Resize(config.size, method=ResizeMethod.Squish)]


def batch_transforms(config: TrainConfig) -> list:
    """Train-time augmentation for X-rays (no vertical flip) then ImageNet normalisation."""
    augs = aug_transforms(
        do_flip=config.flip,
        flip_vert=False,
        max_rotate=config.max_rotate,
        max_zoom=config.max_zoom,
        max_lighting=config.max_lighting,
        max_warp=0.0,
        p_affine=0.75,
        p_lighting=0.75,
    )
    return [*augs, Normalize.from_stats(IMAGENET_MEAN, IMAGENET_STD)]


def xray_datablock(
    config: TrainConfig, cache: Mapping[str, Image.Image] | None = None
) -> DataBlock:
    """The `DataBlock`: X-ray images, fixed NORMAL/PNEUMONIA vocab, seeded splitter."""
    return DataBlock(
        blocks=(xray_block(config.size, cache), CategoryBlock(vocab=list(CLASSES))),
        get_y=label_of,
        splitter=SeededSplitter(config.valid_pct, config.seed, config.split),
        item_tfms=item_transforms(config),
        batch_tfms=batch_transforms(config),
    )


def default_workers() -> int:
    """Loader workers: all cores but one for the main process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def build_dataloaders(
    files: Sequence[Path],
    config: TrainConfig,
    device: torch.device | str | None = None,
    progress: bool = True,  # progress bar while filling the cache
) -> DataLoaders:
    """fastai `DataLoaders` over `files` with the config's split, sizes, batch size and cache."""
    files = list(files)
    workers = default_workers() if config.num_workers is None else config.num_workers
    cache = None
    if should_cache(config.cache, len(files), config.size):
        cache = fill_cache(files, config.size, progress=progress)
    on_gpu = torch.device(device or "cpu").type == "cuda"
    return xray_datablock(config, cache).dataloaders(
        files, bs=config.bs, num_workers=workers, device=device, pin_memory=on_gpu
    )
