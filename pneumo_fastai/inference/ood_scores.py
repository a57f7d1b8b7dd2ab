"""Know when not to answer: flag inputs unlike the training X-rays.

Two layers, both cheap:

1. Input checks before the model (`input_problem`): strong colour, an aspect ratio or a size far
   from a chest radiograph's (both the 224 x 224 copies of Kermany's set and 1000-3000 px
   originals pass), a nearly constant image. A grayscale photo passes these; the next layer is
   for it.
2. A feature check (`GaussianStats`, applied by `ood_check.OodCheck`): the Mahalanobis distance
   (Lee et al., NeurIPS 2018) of the network's pooled layer4 features to the nearest class
   mean, under one covariance shared by the classes (Ledoit-Wolf shrinkage), all fitted on the
   training split. The threshold is the (n+1) conformal quantile of the validation scores at
   1 - alpha (default: 2 % of validation images flagged), never below the same quantile of the
   training scores, so that a small validation set does not over-flag. An ensemble combines its
   members' scores (`ood_check.combined_score`). The energy score of the logits (Liu et al.
   2020) is the measured alternative (bench/ood_flags.py).

A flagged image keeps its probability but is marked, so that no one reads it as a diagnosis.
Nothing here imports torch: the ONNX engine uses it as the torch engine does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

Method = Literal["mahalanobis", "energy"]
ALPHA = 0.02  # share of validation images the feature threshold flags
COLOUR_SPREAD = 24.0  # mean max-min channel difference (0..255) above which an image is colour
ASPECT = (0.5, 2.0)  # width / height of chest radiographs lies well inside this
MIN_SIDE = 64  # pixels; smaller is a thumbnail or an icon
CONSTANT_STD = 4.0  # gray standard deviation (0..255) below which an image is blank
THUMB = 96  # side of the thumbnail the input checks look at


def input_problem(
    gray: Image.Image,
    raw: Image.Image | None = None,
    size: tuple[int, int] | None = None,  # the stored width, height, when `raw` is reduced
) -> str | None:
    """Why an image is unlike a chest radiograph, or None.

    `gray` is the decoded mode "L" image the model gets; `raw`, where there is one, the image as
    its file holds it (opened lazily: only its header size and a reduced decode are used), or a
    reduced copy of it (then `size` is the stored size), for its true size and its colours.
    """
    w, h = size or (raw or gray).size
    if min(w, h) < MIN_SIDE:
        return f"image is {w}x{h} pixels: too small for a chest radiograph"
    if not ASPECT[0] <= w / h <= ASPECT[1]:
        return f"aspect ratio {w / h:.2f} is far from a chest radiograph's"
    if raw is not None and raw.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        if getattr(raw, "fp", None) is not None:  # not decoded yet: decode at a reduced scale
            raw.draft("RGB", (THUMB, THUMB))
        else:
            raw = raw.copy()
        raw.thumbnail((THUMB, THUMB))
        rgb = np.asarray(raw.convert("RGB"), dtype=np.float32)
        spread = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())
        if spread > COLOUR_SPREAD:
            return f"strongly coloured (mean channel spread {spread:.0f} of 255): not an X-ray"
    if np.asarray(gray, dtype=np.float32).std() < CONSTANT_STD:
        return "nearly constant image"
    return None


def conformal_quantile(scores: np.ndarray, alpha: float = ALPHA) -> float:
    """The ceil((n+1)(1 - alpha))-th smallest of n scores (the largest, when n is small)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(scores) + 1) * (1 - alpha))
    return float(scores[min(rank, len(scores)) - 1])


def conformal_threshold(valid: np.ndarray, train: np.ndarray, alpha: float = ALPHA) -> float:
    """`conformal_quantile` of the validation scores, floored by train's 1 - alpha quantile."""
    return float(max(conformal_quantile(valid, alpha), np.quantile(train, 1 - alpha)))


@dataclass(frozen=True)
class GaussianStats:
    """Class means and one shared precision matrix of pooled features."""

    means: np.ndarray  # (n_classes, d)
    precision: np.ndarray  # (d, d)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to the nearest class mean."""
        f = np.asarray(features, dtype=np.float64)
        out = []
        for mean in self.means.astype(np.float64):
            diff = f - mean
            out.append(np.einsum("ij,jk,ik->i", diff, self.precision.astype(np.float64), diff))
        return np.min(out, axis=0)

    def save(self, path: Path) -> None:
        """As a safetensors file (no pickle)."""
        from safetensors.numpy import save_file

        arrays = {"means": self.means, "precision": self.precision}
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, path)

    @classmethod
    def load(cls, path: Path) -> GaussianStats:
        from safetensors.numpy import load_file

        arrays = load_file(path)
        return cls(arrays["means"], arrays["precision"])


def fit_gaussian(features: np.ndarray, labels: np.ndarray) -> tuple[GaussianStats, float]:
    """Class means and the Ledoit-Wolf shared covariance's inverse; also the shrinkage used."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([f[labels == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, labels)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return GaussianStats(means, lw.precision_), float(lw.shrinkage_)
