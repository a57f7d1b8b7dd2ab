"""The fastai `DataBlock` for chest X-rays: loading, transforms, and the `DataLoaders`.

    from pneumo_fastai.data.block import build_dataloaders
    from pneumo_fastai.data.layout import discover
    ds = discover("../shared/data/chest_xray")
    dls = build_dataloaders(ds.files, TrainConfig(data=ds.root))

`LoadXray` opens what fastai's `PILImage.create` opens (a str or Path, a PIL image, a numpy array,
bytes of an encoded file) and DICOM, through `load_xray`, as an 8-bit gray image copied to the 3
channels ResNet expects. Everything pickled into an export lives at module level here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
from fastai.vision.core import PILImage
from fasttransform import Transform
from PIL import Image

from ..config import CLASSES, IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from ..fileio import worker_count
from .cache import fill_cache, should_cache
from .images import load_xray, load_xray_bytes, to_gray8
from .names import label_of
from .split import SeededSplitter


class XrayImage(PILImage):
    """A chest X-ray as fastai's 3-channel image type, shown in gray."""

    _show_args: ClassVar[dict[str, str]] = {"cmap": "gray"}


class LoadXray(Transform):
    """Open an X-ray robustly as an `XrayImage` (grayscale copied to 3 channels)."""

    # what fastai's `PILImage.create` opens, so `learn.predict` takes any of them
    input_types = (str, Path, Image.Image, np.ndarray, bytes)

    def __init__(
        self,
        draft: int | None = None,  # decode big images at about this size, in pixels
        cache: Mapping[str, Image.Image] | None = None,  # decoded images by path (training only)
    ):
        super().__init__()
        self.draft, self.cache = draft, cache

    def encodes(self, x: Any) -> XrayImage:
        return XrayImage(self.gray(x).convert("RGB"))

    def gray(self, x: Any) -> Image.Image:
        """`x` as the mode "L" image the model sees, before resizing."""
        if isinstance(x, Image.Image):
            return to_gray8(x, self.draft)
        if isinstance(x, np.ndarray):
            return to_gray8(Image.fromarray(x), self.draft)
        if isinstance(x, bytes):
            return load_xray_bytes(x, self.draft)
        cache = getattr(self, "cache", None)  # absent in pickles of older versions
        if cache and str(x) in cache:
            return cache[str(x)]
        return load_xray(x, self.draft)

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


def build_dataloaders(
    files: Sequence[Path],
    config: TrainConfig,
    device: torch.device | str | None = None,
    progress: bool = True,  # progress bar while filling the cache
) -> DataLoaders:
    """fastai `DataLoaders` over `files` with the config's split, sizes, batch size and cache."""
    files = list(files)
    workers = (
        worker_count(beside_compute=True) if config.num_workers is None else config.num_workers
    )
    cache = None
    if should_cache(config.cache, len(files), config.size):
        cache = fill_cache(files, config.size, progress=progress)
    on_gpu = torch.device(device or "cpu").type == "cuda"
    return xray_datablock(config, cache).dataloaders(
        files, bs=config.bs, num_workers=workers, device=device, pin_memory=on_gpu
    )
