"""What every engine does to a decoded X-ray before the network: crop, squash, equalise.

    prep = Preprocessing(size=128, crop_margin=0.05, equalize="clahe")
    x = prep(load_xray("scan.dcm"))   # mode "L", 128 x 128

One object, recorded in the model card (`input.preprocessing`) and applied identically by the
fastai pipeline (`LoadXray`, and the training cache) and by the ONNX engine's numpy front end, so
that a model sees at inference exactly what it saw in training. Steps, in order:

1. `crop_margin`: cut that fraction of the width and height off each side, where side markers,
   text and collimation edges sit (0: keep the whole field of view).
2. Squash to `size` x `size` (bilinear), keeping everything left.
3. `equalize`: `hist`, PIL's global histogram equalisation; `clahe`, scikit-image's contrast
   limited adaptive histogram equalisation (8 x 8 tiles, clip limit 0.01); `none`.

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from ..config import Equalize

if TYPE_CHECKING:
    from ..config import TrainConfig

CLAHE_TILES = 8  # tiles per side
CLAHE_CLIP = 0.01  # scikit-image's default clip limit


def clahe(img: Image.Image) -> Image.Image:
    """scikit-image's CLAHE of a mode "L" image, back to uint8."""
    from skimage.exposure import equalize_adapthist  # imported here: only CLAHE models need it

    x = np.asarray(img, dtype=np.float64) / 255.0
    kernel = max(2, min(img.size) // CLAHE_TILES)
    out = equalize_adapthist(x, kernel_size=kernel, clip_limit=CLAHE_CLIP)
    return Image.fromarray(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class Preprocessing:
    """Crop, squash and equalise a mode "L" X-ray (see the module docstring)."""

    size: int  # square side in pixels
    crop_margin: float = 0.0  # fraction of width and height cut off each side
    equalize: Equalize = "none"

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.crop_margin:
            dx, dy = round(img.width * self.crop_margin), round(img.height * self.crop_margin)
            img = img.crop((dx, dy, img.width - dx, img.height - dy))
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        if self.equalize == "hist":
            img = ImageOps.equalize(img)
        elif self.equalize == "clahe":
            img = clahe(img)
        return img

    def describe(self) -> dict[str, Any]:
        """The card's record of these steps."""
        return asdict(self)


def preprocessing(config: TrainConfig) -> Preprocessing:
    """The steps a training configuration asks for."""
    return Preprocessing(config.size, config.crop_margin, config.equalize)


def prep_of(spec: Any) -> dict[str, Any]:
    """A card's `input.preprocessing` (cards of 0.1.0 have none: squash only)."""
    return spec.preprocessing or Preprocessing(spec.size).describe()
