"""The fastai `DataBlock` for chest X-rays: loading, transforms, and the `DataLoaders`.

    from pneumo_fastai.data.block import build_dataloaders
    from pneumo_fastai.data.layout import discover
    ds = discover("../shared/data/chest_xray")
    dls = build_dataloaders(ds.files, TrainConfig(data=ds.root))

`LoadXray` opens what fastai's `PILImage.create` opens (a str or Path, a PIL image, a numpy array,
bytes of an encoded file) and DICOM, through `load_xray`, as one 8-bit gray channel. Images stay
one channel through the loader and the batch augmentation (a third of the work of three equal
channels, with the same result: every transform treats channels alike), and `GrayToRGB` copies
them to the 3 channels ResNet expects just before ImageNet normalisation. Everything pickled into
an export lives at module level here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import IntToFloatTensor
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandomResizedCrop
from fastai.vision.core import PILImage
from fasttransform import Transform
from PIL import Image

from ..config import TrainConfig
from ..fileio import worker_count
from .augment import batch_transforms, item_transforms
from .cache import fill_cache, should_cache
from .images import load_xray, load_xray_bytes, to_gray8
from .names import label_fn
from .preprocess import Preprocessing, preprocessing
from .select import training_split


class XrayImage(PILImage):
    """A chest X-ray as fastai's image type: one gray channel (3 in exports of 0.1.0)."""

    _show_args: ClassVar[dict[str, str]] = {"cmap": "gray"}


class GrayToRGB(Transform):
    """Copy a batch of one-channel images to the 3 channels the network expects."""

    order = 90  # after every augmentation, before `Normalize` (99)

    def encodes(self, x: TensorImage) -> TensorImage:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class LoadXray(Transform):
    """Open an X-ray robustly as a one-channel `XrayImage`."""

    # what fastai's `PILImage.create` opens, so `learn.predict` takes any of them
    input_types = (str, Path, Image.Image, np.ndarray, bytes)

    def __init__(
        self,
        draft: int | None = None,  # decode big images at about this size, in pixels
        cache: Mapping[str, Image.Image] | None = None,  # prepared images by path (training)
        prep: Preprocessing | None = None,  # crop, squash, equalise (see `preprocess.py`)
    ):
        super().__init__()
        self.draft, self.cache, self.prep = draft, cache, prep
        self.one_channel = True  # `GrayToRGB` in the batch transforms makes the 3 channels

    def encodes(self, x: Any) -> XrayImage:
        gray = self.gray(x)
        # pickles made before `GrayToRGB` existed lack `one_channel`: their loader makes 3 channels
        return XrayImage(gray if getattr(self, "one_channel", False) else gray.convert("RGB"))

    def gray(self, x: Any) -> Image.Image:
        """`x` as the mode "L" image the model sees (prepared, when the export has steps)."""
        cache = getattr(self, "cache", None)  # absent in pickles of older versions
        if cache and isinstance(x, str | Path) and str(x) in cache:
            return cache[str(x)]  # prepared when the cache was filled
        img = self.open(x)
        prep = getattr(self, "prep", None)  # absent in pickles of 0.1.0: they resize later
        return img if prep is None else prep(img)

    def open(self, x: Any) -> Image.Image:
        """Any input `PILImage.create` takes, or DICOM, as a mode "L" image."""
        if isinstance(x, Image.Image):
            return to_gray8(x, self.draft)
        if isinstance(x, np.ndarray):
            return to_gray8(Image.fromarray(x), self.draft)
        if isinstance(x, bytes):
            return load_xray_bytes(x, self.draft)
        return load_xray(x, self.draft)

    def __getstate__(self) -> dict:
        # the cache holds training images: never pickle it into an export
        return {**self.__dict__, "cache": None}


def uses_cache(dls: DataLoaders) -> bool:
    """Whether the loaders read decoded images from RAM."""
    loaders = [t for t in dls.train_ds.tls[0].tfms.fs if isinstance(t, LoadXray)]
    return any(t.cache is not None for t in loaders)


def xray_block(
    prep: Preprocessing,  # crop and squash to the model's size, equalise
    cache: Mapping[str, Image.Image] | None = None,  # prepared training images by path
) -> TransformBlock:
    """Like fastai's `ImageBlock`, opening files with `LoadXray`, one channel until batched.

    `prep` squashes every image to the model's size, so no item transform resizes again.
    """
    loader = LoadXray(draft=prep.size, cache=cache, prep=prep)
    return TransformBlock(type_tfms=loader, batch_tfms=[IntToFloatTensor, GrayToRGB])


def random_crops(config: TrainConfig) -> list:
    """fastai's `RandomResizedCrop` per training image when `min_scale` < 1 (validation: none).

    `val_xtra=0`: at validation fastai's crop keeps the whole image, already at `size`.
    """
    if config.min_scale >= 1.0:
        return []
    return [RandomResizedCrop(config.size, min_scale=config.min_scale, val_xtra=0.0)]


def xray_datablock(
    config: TrainConfig, cache: Mapping[str, Image.Image] | None = None
) -> DataBlock:
    """The `DataBlock`: X-ray images, fixed NORMAL/PNEUMONIA vocab, seeded splitter."""
    return DataBlock(
        blocks=(
            xray_block(preprocessing(config), cache),
            CategoryBlock(vocab=list(config.classes), sort=False),
        ),
        get_y=label_fn(config.task),
        item_tfms=[*item_transforms(config), *random_crops(config)],
        splitter=training_split(config),
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
        cache = fill_cache(files, preprocessing(config), progress=progress)
    on_gpu = torch.device(device or "cpu").type == "cuda"
    return xray_datablock(config, cache).dataloaders(
        files, bs=config.bs, num_workers=workers, device=device, pin_memory=on_gpu
    )
