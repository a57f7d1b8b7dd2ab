"""Training-time augmentation of X-ray batches: fastai's spatial and lighting transforms, plus the
intensity changes fastai lacks (gamma, blur or sharpen, noise), then ImageNet normalisation.

Everything here runs on the training split only (`split_idx = 0`) except `Normalize`, and on the
whole batch at once, on the loader's device. Each option is a `TrainConfig` field, off unless
measured to help (see bench/RESULTS.md):

- `max_rotate`, `min_zoom`/`max_zoom` (fastai's zoom also moves the centre, so the border and the
  side marker do not sit in one place), `max_warp`, `max_lighting`, `flip` (horizontal only);
- `gamma`: gamma drawn log-uniformly in [1/(1+g), 1+g] (exposure curves differ between devices);
- `blur`: probability of a blur or a sharpening of random strength (detector and processing);
- `noise`: largest standard deviation of gaussian noise, on the 0..1 scale (quantum noise);
- `acquisition`: the share of images that get each of a random intensity window, a blur or
  sharpening of their own strength, a constant frame (`RandomAcquisition`, on the batch) and a
  JPEG re-compression at a random quality (`RandomJpeg`, per item in the loader workers). Sites
  differ in exactly these global statistics, and Kermany's train split lets a network read the
  label off them (bench/batches.py); drawn per image, none of them predicts the label.
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn.functional as F
from fastai.data.transforms import Normalize
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandTransform, aug_transforms
from fastai.vision.core import PILImage
from PIL import Image

from ..config import IMAGENET_MEAN, IMAGENET_STD, TrainConfig

P_INTENSITY = 0.75  # share of images that get each intensity change, as fastai's p_lighting


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of an (n, c, h, w) batch, reflect-padded.

    A weighted sum of shifted views: on a CPU this is several times faster than `conv2d` with a
    depthwise kernel this small.
    """
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).tolist()
    h, w = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = sum(k * padded[..., :, i : i + w] for i, k in enumerate(kernel))
    return sum(k * rows[..., i : i + h, :] for i, k in enumerate(kernel))


class RandomIntensity(RandTransform):
    """Per-image gamma, blur or sharpen, and gaussian noise of a float batch in 0..1."""

    order = 45  # after fastai's affine (30) and lighting (40), before Normalize (99)
    split_idx = 0  # training only

    def __init__(
        self,
        gamma: float = 0.0,  # gamma in [1/(1+gamma), 1+gamma], log-uniform; 0: off
        blur: float = 0.0,  # probability of a blur or sharpen; 0: off
        noise: float = 0.0,  # largest noise standard deviation; 0: off
        p: float = P_INTENSITY,  # probability of gamma and of noise per image
    ):
        super().__init__(p=1.0)
        self.gamma, self.blur, self.noise, self.p_each = gamma, blur, noise, p

    def _chosen(self, n: int, p: float, device: torch.device) -> torch.Tensor:
        return (torch.rand(n, device=device) < p).float().view(n, 1, 1, 1)

    def encodes(self, x: TensorImage) -> TensorImage:
        out = x.as_subclass(torch.Tensor).clamp(0, 1)
        n, dev = out.shape[0], out.device
        if self.gamma:
            span = math.log1p(self.gamma)
            log_g = (torch.rand(n, device=dev) * 2 - 1).view(n, 1, 1, 1) * span
            out = out.clamp_min(1e-6) ** torch.exp(log_g * self._chosen(n, self.p_each, dev))
        if self.blur:
            sigma = 0.4 + 0.8 * float(torch.rand(()))  # one kernel a batch, in pixels
            alpha = (torch.rand(n, device=dev) * 2 - 1).view(n, 1, 1, 1)  # >0 blur, <0 sharpen
            chosen = self._chosen(n, self.blur, dev).view(n).bool()  # only these are filtered
            if chosen.any():  # `out` is a fresh tensor here: writing into it is safe
                picked = out[chosen]
                out[chosen] = picked + alpha[chosen] * (_gaussian_blur(picked, sigma) - picked)
        if self.noise:
            sigma = torch.rand(n, device=dev).view(n, 1, 1, 1) * self.noise
            grain = torch.randn(n, 1, *out.shape[2:], device=dev)  # the same in every channel
            out = out + grain * sigma * self._chosen(n, self.p_each, dev)
        return TensorImage(out.clamp(0, 1))


class RandomAcquisition(RandTransform):
    """Per-image intensity window, blur or sharpening, and frame of a float batch in 0..1."""

    order = 46  # after `RandomIntensity` (45), before `GrayToRGB` (90)
    split_idx = 0  # training only
    WINDOW = 0.15  # black level and white point move by up to this much
    SHARPEN = 2.0  # strongest sharpening, as a multiple of the detail a blur removes
    FRAME = 0.08  # widest frame, as a share of the side

    def __init__(self, p: float = 0.5):  # share of images that get each change
        super().__init__(p=1.0)
        self.p_each = p

    def _chosen(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device) < self.p_each

    def encodes(self, x: TensorImage) -> TensorImage:
        out = x.as_subclass(torch.Tensor).clamp(0, 1)
        n, dev, (h, w) = out.shape[0], out.device, out.shape[-2:]
        u = lambda: torch.rand(n, 1, 1, 1, device=dev)  # noqa: E731
        low, high = (u() * 2 - 1) * self.WINDOW, 1 + (u() * 2 - 1) * self.WINDOW
        windowed = ((out - low) / (high - low)).clamp(0, 1)
        out = torch.where(self._chosen(n, dev).view(n, 1, 1, 1), windowed, out)
        chosen = self._chosen(n, dev)
        if chosen.any():  # blur (alpha < 0, -1: fully) or sharpen (alpha > 0), per image
            picked = out[chosen]
            sigma = 0.5 + float(torch.rand(()))
            alpha = u()[chosen] * (1 + self.SHARPEN) - 1
            out[chosen] = (picked + alpha * (picked - _gaussian_blur(picked, sigma))).clamp(0, 1)
        rows = torch.arange(h, device=dev).view(h, 1)
        cols = torch.arange(w, device=dev).view(1, w)
        edge = torch.minimum(torch.minimum(rows, h - 1 - rows), torch.minimum(cols, w - 1 - cols))
        width = (u() * self.FRAME * min(h, w)).ceil() * self._chosen(n, dev).view(n, 1, 1, 1)
        out = torch.where(edge < width, u(), out)
        return TensorImage(out)


class RandomJpeg(RandTransform):
    """Re-compress a training image as JPEG at a random quality (in the loader's workers)."""

    order = 5  # on the decoded item, before any tensor conversion
    split_idx = 0  # training only
    QUALITY = (20, 95)  # range of JPEG qualities drawn from

    def __init__(self, p: float = 0.5):  # share of images re-compressed
        super().__init__(p=p)

    def encodes(self, x: PILImage) -> PILImage:
        buffer = io.BytesIO()
        quality = int(torch.randint(self.QUALITY[0], self.QUALITY[1] + 1, ()))
        x.save(buffer, format="JPEG", quality=quality)
        decoded = Image.open(buffer, formats=["JPEG"])
        decoded.load()
        return type(x)(decoded.convert(x.mode))


def item_transforms(config: TrainConfig) -> list:
    """Per-item training augmentation, run in the loader's workers."""
    return [RandomJpeg(config.acquisition)] if config.acquisition else []


def batch_transforms(config: TrainConfig) -> list:
    """Train-time augmentation for X-rays (no vertical flip) then ImageNet normalisation."""
    augs = aug_transforms(
        do_flip=config.flip,
        flip_vert=False,
        max_rotate=config.max_rotate,
        min_zoom=config.min_zoom,
        max_zoom=config.max_zoom,
        max_lighting=config.max_lighting,
        max_warp=config.max_warp,
        p_affine=0.75,
        p_lighting=0.75,
    )
    if config.gamma or config.blur or config.noise:
        augs.append(RandomIntensity(config.gamma, config.blur, config.noise))
    if config.acquisition:
        augs.append(RandomAcquisition(config.acquisition))
    return [*augs, Normalize.from_stats(IMAGENET_MEAN, IMAGENET_STD)]
