"""How often the OOD check flags: held-out X-rays, their corruptions, photos and odd X-rays.

    python bench/ood_flags.py exports/pneumo_resnet34.json --test /path/holdout/chest_xray/test

Sets, each predicted through the export (`load_model(...).predict_batch`, so the input checks and
the feature check both act, as in `predict`):
- the patient-disjoint holdout (target: at most 5 % flagged), and the same under each corruption
  of `robustness.py` (reported);
- non-X-ray images that ship inside installed packages: scikit-image's and matplotlib's sample
  images, in colour and converted to grayscale (target: at least 95 % flagged);
- holdout X-rays rotated 90 degrees, inverted, and colour-tinted (reported).
For the method choice it also scores every set with the energy score of the logits
(thresholded the same way on the validation split) beside the card's Mahalanobis check.
"""

from __future__ import annotations

import argparse
import gzip
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from benchlib import machine_line, print_table
from PIL import Image, ImageOps
from robustness import CORRUPTIONS

from pneumo_fastai import load_model
from pneumo_fastai.data.images import load_xray
from pneumo_fastai.data.layout import list_split
from pneumo_fastai.inference.ood_scores import conformal_threshold
from pneumo_fastai.training.reference import features_and_logits
from pneumo_fastai.valid_csv import read_valid


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy, -logsumexp(logits / T) * T: higher means less familiar."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(z - top).sum(axis=1))) * temperature


def package_images() -> dict[str, Image.Image]:
    """Sample images bundled with scikit-image and matplotlib (nothing is downloaded)."""
    import skimage.data as data

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee",
                     "coins", "colorwheel", "grass", "gravel", "hubble_deep_field",
                     "immunohistochemistry", "logo", "moon", "page", "rocket", "text",
                     "shepp_logan_phantom", "retina", "horse"):  # fmt: skip
            try:
                array = getattr(data, name)()
            except Exception:  # not bundled in this version (would need a download)
                continue
            if array.dtype == bool:
                array = array.astype(np.uint8) * 255
            if array.dtype != np.uint8:
                array = (255 * (array - array.min()) / max(np.ptp(array), 1e-9)).astype(np.uint8)
            out[f"skimage {name}"] = Image.fromarray(array)
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        if (sample / name).is_file():
            out[f"matplotlib {name}"] = Image.open(sample / name).convert("RGB")
    mri = sample / "s1045.ima.gz"
    if mri.is_file():  # a 256 x 256 16-bit MRI slice: medical, not a radiograph
        pixels = np.frombuffer(gzip.decompress(mri.read_bytes()), np.uint16).reshape(256, 256)
        scaled = (pixels / pixels.max() * 255).astype(np.uint8)
        out["matplotlib s1045 MRI"] = Image.fromarray(scaled)
    return out


def odd_xrays(images: list[Image.Image]) -> dict[str, list[Image.Image]]:
    """X-rays as no radiograph should arrive: turned 90 degrees, inverted, tinted in colour."""
    tint = np.array([1.0, 0.55, 0.35])
    return {
        "X-rays rotated 90 degrees": [img.rotate(90, expand=True) for img in images],
        "X-rays inverted": [ImageOps.invert(img) for img in images],
        "X-rays tinted orange": [
            Image.fromarray((np.asarray(img.convert("RGB")) * tint).astype(np.uint8))
            for img in images
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("--test", type=Path, required=True, help="held-out folder (NORMAL/ PNEUMONIA/)")
    p.add_argument("--n-odd", type=int, default=100, help="X-rays used for the odd variants")
    args = p.parse_args()
    print(machine_line())
    model = load_model(args.model, precision="fp32")
    if model.ood is None:
        raise SystemExit(f"{args.model} has no OOD check (train it with this version).")
    files = list_split(args.test).all_images()
    xrays = [load_xray(f) for f in files]
    rng = np.random.default_rng(0)
    photos = package_images()
    sets: dict[str, list[Image.Image]] = {"holdout X-rays": xrays}
    for k, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        sets[f"holdout, {name}"] = [
            corrupt(img, np.random.default_rng([0, k, i])) for i, img in enumerate(xrays)
        ]
    sets["package images, colour"] = list(photos.values())
    sets["package images, grayscale"] = [img.convert("L") for img in photos.values()]
    picked = [xrays[i] for i in rng.choice(len(xrays), min(args.n_odd, len(xrays)), False)]
    sets |= odd_xrays(picked)

    # the energy alternative, thresholded on the export's own validation split like the card's
    exported = model.exported
    valid = read_valid(exported.card, exported.card_path)
    valid_files = [Path(exported.card.data.root) / f for f in valid.files]
    t = getattr(exported.card, "temperature", 1.0)

    def energies(images: list[Image.Image]) -> np.ndarray:
        dl = exported.dataloader(images, bs=64, num_workers=0)
        return energy(features_and_logits(exported.learner.model, dl)[1], t)

    valid_energy = energies([load_xray(f) for f in valid_files])
    e_threshold = conformal_threshold(valid_energy, valid_energy, exported.card.ood.alpha)
    rows = []
    for name, images in sets.items():
        preds = model.predict_batch(images, bs=64)
        flagged = np.mean([bool(q.ood) for q in preds])
        by_input = np.mean([bool(q.ood) and "features" not in (q.ood_reason or "") for q in preds])
        e = np.mean(energies(images) > e_threshold)
        rows.append([name, len(images), f"{flagged:.1%}", f"{by_input:.1%}", f"{e:.1%}"])
    print(f"{len(photos)} package images: {', '.join(photos)}")
    print_table(
        ["set", "images", "flagged (card's check)", "of which by input checks",
         "energy score alone"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
