"""`pneumo-fastai adapt`: an export adapted to a new site's class mix, from its unlabelled X-rays.

    pneumo-fastai adapt exports/pneumo_resnet34.json site_b/ --name pneumo_site_b
    from pneumo_fastai.inference.adapt import adapt_export
    result = adapt_export("exports/pneumo_resnet34.json", "site_b/", "pneumo_site_b")

The export predicts every image of the folder (its calibrated probabilities, unadapted); the
images the OOD check flags or that cannot be read are left out; EM estimates the site's class
shares and a bootstrap over the images gives their interval (`prior_shift.py`). The adapted
export is a new card, `NAME.json`, beside the same weights (its file entries point at them):
it records the source and estimated shares, the rule, and the unadapted P(PNEUMONIA) that now
decides. Every engine (torch, ONNX, the web demo) applies it; the threshold value stays the
card's, now compared with the adapted probability.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..card import Card, EnsembleCard, card_path_of, parse_card, read_card, timestamp, verify_file
from ..config import ADAPT_MIN_IMAGES
from ..errors import PneumoError
from ..fileio import sha256_file, write_text_atomic
from .inputs import expand_inputs
from .prior_shift import PriorShift, bootstrap_interval, em_prevalence

LEVEL = 0.95
METHOD = (
    "EM on the calibrated probabilities (Saerens, Latinne & Decaestecker 2002), "
    "{n_boot} bootstrap resamples of the images for the interval"
)
RULE = (
    "p_site(class) proportional to p(class) * target(class) / source(class); PNEUMONIA where the "
    "adapted P(PNEUMONIA) >= decision_threshold.value"
)


@dataclass(frozen=True)
class AdaptResult:
    """What `adapt_export` wrote and found."""

    card_path: Path  # the adapted export's card
    card: Card
    shift: PriorShift
    n_images: int  # images the estimate used
    n_flagged: int  # left out: unlike the training X-rays
    n_unreadable: int  # left out: could not be read


def source_shares(card: Card, card_path: Path) -> np.ndarray:
    """What the calibrated probabilities assume: NORMAL and PNEUMONIA shares of the mean
    validation probability (`NAME.valid.csv`, checked against the card)."""
    valid = verify_file(card, card_path, "valid")
    with open(valid, newline="") as f:
        p = np.array([float(row["probability"]) for row in csv.DictReader(f)])
    return np.array([1 - p.mean(), p.mean()])


def _repointed(card: Card, card_path: Path, folder: Path) -> dict[str, Any]:
    """The card's fields with its files (and members) named relative to `folder`."""
    fields = card.model_dump(mode="json")

    def rel(name: str) -> str:
        return Path(os.path.relpath(card_path.parent / name, folder)).as_posix()

    for entry in fields["files"].values():
        entry["name"] = rel(entry["name"])
    if isinstance(card, EnsembleCard):
        for member in fields["members"]:
            member["card"] = rel(member["card"])
    return fields


def adapt_export(
    source: Path | str,  # the export to adapt (its card, weights or folder)
    folder: Path | str,  # the site's X-rays (unlabelled; any layout, searched recursively)
    name: str,  # the adapted export's name
    exports: Path | str | None = None,  # where NAME.json goes (default: beside the source)
    n_boot: int = 200,  # bootstrap resamples for the interval
    seed: int = 0,  # of the bootstrap
    engine: str = "torch",  # torch or onnx
    precision: str = "auto",  # torch engine: auto, fp32 or bf16
    bs: int = 32,
    progress: bool = False,
) -> AdaptResult:
    """Estimate the site's class shares from `folder` and write the adapted export `name`."""
    from .predict import load_model

    card_path = card_path_of(source)
    card = read_card(card_path)
    if len(card.classes) != 2:
        raise PneumoError(
            f"{card_path} predicts {', '.join(card.classes)}: adapt works on binary NORMAL vs "
            "PNEUMONIA exports (their validation file holds the two classes' probabilities)."
        )
    out = Path(exports) if exports is not None else card_path.parent
    target_path = out / f"{name}.json"
    if target_path.resolve() == card_path.resolve():
        raise PneumoError(f"--name {name} would overwrite the export being adapted; pick another.")
    src = source_shares(card, card_path)
    files = expand_inputs([folder])
    classifier = load_model(card_path, engine=engine, precision=precision)
    classifier.shift = None  # EM needs the unadapted probabilities, even of an adapted export
    preds = classifier.predict_batch(files, bs=bs, progress=progress)
    unreadable = sum(not p.ok for p in preds)
    flagged = sum(bool(p.ok and p.ood) for p in preds)
    used = np.array([p.probability for p in preds if p.ok and not p.ood])
    if len(used) < ADAPT_MIN_IMAGES:
        raise PneumoError(
            f"{folder} has {len(used)} usable X-ray(s) ({unreadable} unreadable, {flagged} unlike "
            f"the training X-rays, of {len(files)} file(s)); estimating a site's class mix needs "
            f"at least {ADAPT_MIN_IMAGES}. Add more of the site's X-rays to the folder."
        )
    probs = np.column_stack([1 - used, used])
    shift = PriorShift(src, em_prevalence(probs, src))
    lo, hi = bootstrap_interval(probs, src, n_boot, seed, LEVEL)
    classes = list(card.classes)
    fields = _repointed(card, card_path, out)
    fields |= {
        "name": name,
        "created": timestamp(),
        "adaptation": {
            "method": METHOD.format(n_boot=n_boot),
            "rule": RULE,
            "source": dict(zip(classes, map(float, shift.source), strict=True)),
            "target": dict(zip(classes, map(float, shift.target), strict=True)),
            "interval": {c: [float(lo[i]), float(hi[i])] for i, c in enumerate(classes)},
            "level": LEVEL,
            "n_images": len(used),
            "n_left_out": unreadable + flagged,
            "folder": str(Path(folder).resolve()),
            "raw_threshold": shift.raw_threshold(card.decision_threshold.value),
            "base": {"name": card.name, "sha256": sha256_file(card_path)},
        },
    }
    adapted = parse_card(fields, "the adapted model card")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target_path, adapted.to_json())
    return AdaptResult(target_path, adapted, shift, len(used), flagged, unreadable)
