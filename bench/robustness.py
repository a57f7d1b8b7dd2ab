"""A shift proxy: an export on a held-out folder under fixed, seeded corruptions.

    python bench/robustness.py exports/pneumo_resnet34.json --test /path/holdout/chest_xray/test
    python bench/robustness.py a.json b.json --test ... --json out.json   # several, side by side

We do not have the official test split (nor other hospitals' X-rays) and must not tune on them.
What we can do is ask how a model holds up when the images change the way they change between
sites and devices: contrast and gamma, blur, noise, JPEG re-compression, a lower resolution, a
tighter field of view (the border, where markers and collimation edges sit, cropped away), and a
higher share of NORMAL cases (37.5 %, as in Kermany's official test split, against 25.7 % in
train). Each corruption is applied to every decoded image (numpy/PIL, seeded per image), the
export predicts the corrupted set, and the table gives ROC AUC, accuracy at the card's decision
threshold, sensitivity and specificity per corruption and their mean over the corruptions (the
clean row is not in the mean). A recipe whose mean holds up is what we want; in-distribution
accuracy alone is not the target.

Every figure of the proxy weighs the images as the official test split mixes them (`test_mix`):
NORMAL is 37.5 % of the weight, and within NORMAL the `NORMAL2-IM-*` batch 70 % and the `IM-*`
batch 30 % (train has 55 % `NORMAL2-IM-*`; the official test's errors sit in that batch).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchlib import machine_line, print_table
from PIL import Image, ImageFilter
from sklearn.metrics import roc_auc_score

from pneumo_fastai import load_model
from pneumo_fastai.card import read_card
from pneumo_fastai.data.images import load_xray
from pneumo_fastai.data.layout import list_split
from pneumo_fastai.data.names import label_of

NORMAL_SHARE = 0.375  # Kermany's official test split: 234 NORMAL of 624
Corruption = Callable[[Image.Image, np.random.Generator], Image.Image]


@dataclass(frozen=True)
class LabelledSet:
    """Decoded images of a NORMAL/PNEUMONIA folder, their labels and file paths."""

    files: list[Path]
    images: list[Image.Image]
    y: np.ndarray  # 1: PNEUMONIA

    @classmethod
    def of(cls, folder: Path, size: int) -> LabelledSet:
        """Images decoded as `predict` decodes files for a model of input `size` (JPEG draft)."""
        files = list_split(folder).all_images()
        y = np.array([int(label_of(f) == "PNEUMONIA") for f in files])
        return cls(files, [load_xray(f, draft=size) for f in files], y)


def _levels(img: Image.Image, fn: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    x = np.asarray(img, dtype=np.float32) / 255.0
    return Image.fromarray((np.clip(fn(x), 0, 1) * 255 + 0.5).astype(np.uint8))


def _contrast(factor: float) -> Corruption:
    return lambda img, rng: _levels(img, lambda x: x.mean() + factor * (x - x.mean()))


def _gamma(gamma: float) -> Corruption:
    return lambda img, rng: _levels(img, lambda x: x**gamma)


def _noise(sigma: float) -> Corruption:
    return lambda img, rng: _levels(img, lambda x: x + rng.normal(0, sigma, x.shape))


def _blur(fraction: float) -> Corruption:
    return lambda img, rng: img.filter(ImageFilter.GaussianBlur(fraction * min(img.size)))


def _jpeg(quality: int) -> Corruption:
    def apply(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("L")

    return apply


def _downscale(factor: float) -> Corruption:
    def apply(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        small = (max(8, round(img.width * factor)), max(8, round(img.height * factor)))
        return img.resize(small, Image.BILINEAR).resize(img.size, Image.BILINEAR)

    return apply


def _border_crop(fraction: float) -> Corruption:
    def apply(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        dx, dy = round(img.width * fraction), round(img.height * fraction)
        return img.crop((dx, dy, img.width - dx, img.height - dy)).resize(img.size, Image.BILINEAR)

    return apply


CORRUPTIONS: dict[str, Corruption] = {
    "contrast x0.6": _contrast(0.6),
    "contrast x1.4": _contrast(1.4),
    "gamma 1.5 (darker)": _gamma(1.5),
    "gamma 0.67 (brighter)": _gamma(0.67),
    "blur (sigma 0.7% of side)": _blur(0.007),
    "noise (sigma 0.05)": _noise(0.05),
    "JPEG quality 15": _jpeg(15),
    "downscale x0.35 and back": _downscale(0.35),
    "border crop 8% a side": _border_crop(0.08),
}


NORMAL2_SHARE = 0.70  # of the official test's NORMAL images, those named NORMAL2-IM-*


def normal_batch(path: Path | str) -> str:
    """Which acquisition batch a NORMAL file name belongs to: NORMAL2 or IM."""
    return "NORMAL2" if Path(path).name.upper().startswith("NORMAL2") else "IM"


def test_mix(labels: np.ndarray, files: list[Path]) -> np.ndarray:
    """Per-image weights giving the official test's mix: NORMAL share, and NORMAL2/IM within it."""
    w = np.zeros(len(labels))
    pneumonia = labels == 1
    w[pneumonia] = (1 - NORMAL_SHARE) / pneumonia.sum()
    for batch, share in (("NORMAL2", NORMAL2_SHARE), ("IM", 1 - NORMAL2_SHARE)):
        members = np.array(
            [y == 0 and normal_batch(f) == batch for y, f in zip(labels, files, strict=True)]
        )
        if members.any():
            w[members] = NORMAL_SHARE * share / members.sum()
    return w / w.sum()


def figures(
    y: np.ndarray, p: np.ndarray, threshold: float, w: np.ndarray | None = None
) -> dict[str, float]:
    """ROC AUC and the decision's accuracy, sensitivity and specificity (weighted by `w`)."""
    w = np.ones(len(y)) if w is None else w
    pred = p >= threshold
    return {
        "auc": float(roc_auc_score(y, p, sample_weight=w)),
        "accuracy": float(np.average(pred == y, weights=w)),
        "sensitivity": float(np.average(pred[y == 1], weights=w[y == 1])),
        "specificity": float(np.average(~pred[y == 0], weights=w[y == 0])),
    }


def score(card: Path, images: list[Image.Image], y: np.ndarray, w: np.ndarray, seed: int,
          bs: int, precision: str) -> dict[str, dict[str, float]]:  # fmt: skip
    """Test-mix weighted figures of one export on the clean set and under each corruption."""
    model = load_model(card, precision=precision)

    def probs(imgs: list[Image.Image]) -> np.ndarray:
        return np.array([p.probability for p in model.predict_batch(imgs, bs=bs)])

    t = model.threshold
    out = {"clean": figures(y, probs(images), t, w)}
    for k, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        rngs = [np.random.default_rng([seed, k, i]) for i in range(len(images))]
        corrupted = [corrupt(img, rng) for img, rng in zip(images, rngs, strict=True)]
        out[name] = figures(y, probs(corrupted), t, w)
    shifted = [name for name in out if name != "clean"]
    out["mean of the shifts"] = {
        key: float(np.mean([out[name][key] for name in shifted])) for key in out["clean"]
    }
    out["worst of the shifts"] = {
        key: float(np.min([out[name][key] for name in shifted])) for key in out["clean"]
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", type=Path, nargs="+", help="export cards (.json)")
    p.add_argument("--test", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--precision", default="fp32", help="inference precision (fp32: exact)")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args()
    print(machine_line())
    test = LabelledSet.of(args.test, min(read_card(m).input.size for m in args.models))
    w = test_mix(test.y, test.files)
    print(
        f"{len(test.files)} images ({int((test.y == 0).sum())} NORMAL) from {args.test}, "
        f"weighed as the official test mixes them; seed {args.seed}"
    )
    results = {
        str(m): score(m, test.images, test.y, w, args.seed, args.bs, args.precision)
        for m in args.models
    }
    for model, out in results.items():
        print(f"\n{model}")
        rows = [
            [name, *(f"{f[k]:.3f}" for k in ("auc", "accuracy", "sensitivity", "specificity"))]
            for name, f in out.items()
        ]
        print_table(["set", "ROC AUC", "accuracy @thr", "sensitivity", "specificity"], rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
