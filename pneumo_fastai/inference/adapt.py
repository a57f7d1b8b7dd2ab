"""`pneumo-fastai adapt`: an export fitted to a new site, from its unlabelled or labelled X-rays.

    pneumo-fastai adapt exports/pneumo_resnet34.json site_b/ --name pneumo_site_b
    pneumo-fastai adapt exports/pneumo_resnet34.json --labels site_b_labelled/ --name site_b
    from pneumo_fastai.inference.adapt import adapt_export
    result = adapt_export("exports/pneumo_resnet34.json", "site_b/", "pneumo_site_b")

Both write a new card, `NAME.json`, beside the same weights (its file entries point at them),
which every engine (torch, ONNX, the web demo) applies (`site_adjustment.py`).

- **Unlabelled** (a folder of the site's X-rays): the export predicts every image (its calibrated
  probabilities, unadapted); images the OOD check flags, unreadable files and repeats of the same
  bytes are left out. First `label_shift_test.py` tests the assumption a prior correction rests
  on (the site differs only in its class mix); where it is rejected nothing is written
  (`SiteShiftError`, exit 3) unless `force_prior`. Then EM estimates the site's class shares,
  with a bootstrap interval (`prior_shift.py`), and the card decides at its threshold on the
  re-weighted probabilities. A site that looks like one class is refused.
- **Labelled** (`labels`: a folder with NORMAL/ and PNEUMONIA/, or a CSV of `file,label`): a
  temperature and a threshold at the card's target sensitivity fitted on the site's own labels
  (`site_labels.py`), with the site's sensitivity and specificity and their intervals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..card import Card, EnsembleCard, card_path_of, parse_card, read_card, timestamp
from ..config import ADAPT_MIN_IMAGES, CLASSES
from ..data.layout import list_split
from ..errors import DataError, PneumoError
from ..fileio import check_name, read_csv_rows, sha256_file, write_text_atomic
from ..valid_csv import read_valid
from .inputs import expand_inputs
from .label_shift_test import ShiftTest, label_shift_test
from .prior_shift import PriorShift, bootstrap_interval, clipped_estimate, mean_shares
from .site_labels import SiteFit, fit_site_labels, min_per_class

LEVEL = 0.95
ONE_CLASS = 0.05  # a class whose share's upper bound is below this: the site looks like one class
SHARE_CLIP = (0.02, 0.98)  # estimated shares are kept inside this range
PRIOR_METHOD = (
    "EM on the calibrated probabilities (Saerens, Latinne & Decaestecker 2002), "
    "{n_boot} bootstrap resamples of the images for the interval, shares clipped to [{lo}, {hi}]"
)
PRIOR_RULE = (
    "p_site(class) proportional to p(class) * target(class) / source(class); PNEUMONIA where the "
    "adapted P(PNEUMONIA) >= decision_threshold.value"
)
LABELS_METHOD = (
    "temperature by maximum likelihood and threshold by order-statistic coverage on the site's "
    "labelled sample; {n_boot} bootstrap resamples per class for the intervals"
)
LABELS_RULE = (
    "P(PNEUMONIA) = sigmoid(labels.scale * logit(calibrated P(PNEUMONIA))); PNEUMONIA where it "
    ">= decision_threshold.value (chosen on the site's labels)"
)
THRESHOLD_RULE = (
    "the k-th lowest of the site sample's n PNEUMONIA scores, k = floor((n + 1) * (1 - target)): "
    "expected sensitivity on the site's other images >= target"
)


class SiteShiftError(PneumoError):
    """The site's images differ from training's beyond a change of class mix."""

    exit_code = 3


@dataclass(frozen=True)
class AdaptResult:
    """What `adapt_export` wrote and found."""

    card_path: Path  # the adapted export's card
    card: Card
    n_images: int  # images the fit used
    n_flagged: int  # left out: unlike the training X-rays
    n_unreadable: int  # left out: could not be read
    n_repeats: int = 0  # left out: the same bytes as another file
    shift: PriorShift | None = None  # unlabelled: the correction written
    test: ShiftTest | None = None  # unlabelled: the label-shift test
    fit: SiteFit | None = None  # labelled: what was fitted


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


def _target(card: Card, card_path: Path, name: str, exports: Path | None, force: bool) -> Path:
    """Where NAME.json goes; refuses to overwrite anything but an adaptation of the same export."""
    out = Path(exports) if exports is not None else card_path.parent
    target = out / f"{check_name(name, '--name')}.json"
    if target.resolve() == card_path.resolve():
        raise PneumoError(f"--name {name} would overwrite the export being adapted; pick another.")
    if target.exists() and not force:
        try:
            previous = read_card(target).adaptation
        except PneumoError:
            previous = None
        if previous is None or previous.base.name != card.name:
            raise PneumoError(
                f"{target} exists and is not an earlier adaptation of {card.name}; pick another "
                "--name, or pass --force to replace it."
            )
    return target


def _distinct(files: list[Path]) -> tuple[list[Path], int]:
    """`files` without repeats of the same bytes (the first of each kept), and how many repeats."""
    seen: set[str] = set()
    kept = []
    for f in files:
        digest = sha256_file(f)
        if digest not in seen:
            seen.add(digest)
            kept.append(f)
    return kept, len(files) - len(kept)


def labelled_sample(labels: Path) -> tuple[list[Path], np.ndarray]:
    """Files and labels (1: PNEUMONIA) of a folder with NORMAL/ and PNEUMONIA/, or a CSV."""
    labels = Path(labels)
    if labels.is_dir():
        listing = list_split(labels)
        files = [f for cls in CLASSES for f in listing.images.get(cls, [])]
        y = [int(cls == CLASSES[1]) for cls in CLASSES for _ in listing.images.get(cls, [])]
        if not files:
            raise DataError(f"{labels} has no images in NORMAL/ or PNEUMONIA/ sub-folders.")
        return files, np.array(y)
    if not labels.is_file():
        raise DataError(f"No such label file or folder: {labels}.")
    rows = read_csv_rows(labels, "Label file")
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataError(f"{labels} needs the columns file and label (NORMAL or PNEUMONIA).")
    bad = sorted({r["label"] for r in rows} - set(CLASSES))
    if bad:
        raise DataError(f"{labels} has labels other than NORMAL and PNEUMONIA: {', '.join(bad)}.")
    outside = [
        r["file"] for r in rows if Path(r["file"]).is_absolute() or ".." in Path(r["file"]).parts
    ]
    if outside:
        raise DataError(
            f"{labels} names {outside[0]!r}: list files by their path relative to the CSV's "
            f"folder, without '..' ({len(outside)} such row(s))."
        )
    files = [(labels.parent / r["file"]) for r in rows]
    missing = [r["file"] for r, f in zip(rows, files, strict=True) if not f.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise DataError(
            f"{labels} names {len(missing)} file(s) that do not exist (relative to "
            f"{labels.parent}): {shown}."
        )
    return files, np.array([int(r["label"] == CLASSES[1]) for r in rows])


def _shares(card: Card, values: np.ndarray) -> dict[str, float]:
    return dict(zip(card.classes, map(float, values), strict=True))


def adapt_export(
    source: Path | str,  # the export to adapt (its card, weights or folder)
    folder: Path | str | None,  # the site's X-rays (unlabelled; any layout, searched recursively)
    name: str,  # the adapted export's name
    exports: Path | str | None = None,  # where NAME.json goes (default: beside the source)
    labels: Path | str | None = None,  # a labelled site sample: NORMAL/ + PNEUMONIA/, or a CSV
    force_prior: bool = False,  # apply the prior correction even where its test rejects it
    force: bool = False,  # replace an existing NAME.json that is not an adaptation of `source`
    n_boot: int = 200,  # bootstrap resamples for the interval
    seed: int = 0,  # of the bootstrap
    engine: str = "torch",  # torch or onnx
    precision: str = "auto",  # torch engine: auto, fp32 or bf16
    bs: int = 32,
    progress: bool = False,
) -> AdaptResult:
    """Fit the export `source` to a site and write the adapted export `name` (see the module)."""
    from .predict import load_model

    card_path = card_path_of(source)
    card = read_card(card_path)
    if len(card.classes) != 2:
        raise PneumoError(
            f"{card_path} predicts {', '.join(card.classes)}: adapt works on binary NORMAL vs "
            "PNEUMONIA exports (their validation file holds the two classes' probabilities)."
        )
    if (folder is None) == (labels is None):
        raise PneumoError("Give the site's unlabelled X-rays (FOLDER) or --labels, not both.")
    target_path = _target(card, card_path, name, Path(exports) if exports else None, force)
    if card.adaptation is not None:
        raise PneumoError(
            f"{card_path} is itself adapted (to {Path(card.adaptation.folder).name}); adapt the "
            f"export it came from, {card.adaptation.base.name}."
        )
    classifier = load_model(card_path, engine=engine, precision=precision)
    if labels is not None:
        files, y = labelled_sample(Path(labels))
    else:
        files, y = expand_inputs([folder]), None
    distinct, repeats = _distinct(files)
    if y is not None and repeats:
        raise DataError(
            f"{labels} lists {repeats} file(s) with the same bytes as another: a labelled sample "
            "must hold each X-ray once."
        )
    preds = classifier.predict_batch(distinct, bs=bs, progress=progress)
    unreadable = sum(not p.ok for p in preds)
    flagged = sum(bool(p.ok and p.ood) for p in preds)
    used = [i for i, p in enumerate(preds) if p.ok and not p.ood]
    p_used = np.array([preds[i].probability for i in used])
    valid = read_valid(card, card_path)  # adapt takes binary cards: y is PNEUMONIA
    p_valid, y_valid = valid.probability, valid.y
    counts = dict(unreadable=unreadable, flagged=flagged, repeats=repeats, total=len(files))
    common = {
        "level": LEVEL,
        "n_images": len(used),
        "n_left_out": unreadable + flagged + repeats,
        "folder": str(Path(labels if labels is not None else folder).resolve()),
        "base": {"name": card.name, "sha256": sha256_file(card_path)},
    }
    fields = _repointed(card, card_path, target_path.parent)
    fields |= {"name": name, "created": timestamp()}
    if y is not None:
        fit = _fit_labels(card, p_used, y[used], n_boot, seed, counts, labels)
        fields["decision_threshold"] = {
            "value": fit.threshold,
            "target_sensitivity": card.decision_threshold.target_sensitivity,
            "rule": THRESHOLD_RULE,
        }
        fields["adaptation"] = common | {
            "kind": "labels",
            "method": LABELS_METHOD.format(n_boot=n_boot),
            "rule": LABELS_RULE,
            "labels": {
                "n": fit.n, "scale": fit.scale, "threshold_rule": THRESHOLD_RULE,
                "expected_sensitivity": fit.expected_sensitivity,
                "sensitivity": fit.sensitivity, "specificity": fit.specificity,
                "sensitivity_interval": fit.sensitivity_interval,
                "specificity_interval": fit.specificity_interval,
                "base_threshold": card.decision_threshold.value,
            },
        }  # fmt: skip
        result = dict(fit=fit)
    else:
        shift, test, interval = _fit_prior(card, p_used, p_valid, y_valid, n_boot, seed, counts)
        if test.rejected and not force_prior:
            raise SiteShiftError(_rejection(folder, test, card))
        lo, hi = interval
        fields["adaptation"] = common | {
            "kind": "prior",
            "method": PRIOR_METHOD.format(n_boot=n_boot, lo=SHARE_CLIP[0], hi=SHARE_CLIP[1]),
            "rule": PRIOR_RULE,
            "source": _shares(card, shift.source),
            "target": _shares(card, shift.target),
            "interval": {c: [float(lo[i]), float(hi[i])] for i, c in enumerate(card.classes)},
            "raw_threshold": shift.raw_threshold(card.decision_threshold.value),
            "shift_test": {
                "test": test.describe(), "normal_share": test.normal_share,
                "distance": test.distance, "p_value": test.p_value,
                "ood_share": test.ood_share, "ood_p_value": test.ood_p_value,
                "rejected": test.rejected, "forced": bool(test.rejected and force_prior),
            },
        }  # fmt: skip
        result = dict(shift=shift, test=test)
    adapted = parse_card(fields, "the adapted model card")
    target_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target_path, adapted.to_json())
    return AdaptResult(target_path, adapted, len(used), flagged, unreadable, repeats, **result)


def _usable(counts: dict[str, int]) -> str:
    return (
        f"{counts['unreadable']} unreadable, {counts['flagged']} unlike the training X-rays, "
        f"{counts['repeats']} repeating another file's bytes, of {counts['total']} file(s)"
    )


def _fit_prior(
    card: Card, p: np.ndarray, p_valid: np.ndarray, y_valid: np.ndarray, n_boot: int, seed: int,
    counts: dict[str, int],
) -> tuple[PriorShift, ShiftTest, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The test, the clipped EM estimate and its interval, or a `PneumoError` saying why not."""
    if len(p) < ADAPT_MIN_IMAGES:
        raise DataError(
            f"The site folder has {len(p)} usable X-ray(s) ({_usable(counts)}); estimating a "
            f"site's class mix needs at least {ADAPT_MIN_IMAGES} distinct ones. Add more of the "
            "site's X-rays to the folder."
        )
    src = mean_shares(p_valid)
    lo, hi = bootstrap_interval(np.column_stack([1 - p, p]), src, n_boot, seed, LEVEL)
    one = [c for i, c in enumerate(card.classes) if hi[i] < ONE_CLASS]
    if one:
        raise DataError(
            f"The site's X-rays look like {'NORMAL' if one[0] == 'PNEUMONIA' else 'PNEUMONIA'} "
            f"alone: the estimated {one[0]} share is below {ONE_CLASS:.0%} even at the top of its "
            f"{LEVEL:.0%} interval. A class mix cannot be adapted to from a one-class folder; give "
            "the site's unselected X-rays, or a labelled sample (--labels)."
        )
    test = label_shift_test(p, p_valid, y_valid, n_flagged=counts["flagged"], seed=seed)
    return clipped_estimate(p, src, SHARE_CLIP), test, (lo, hi)


def _rejection(folder: Path | str | None, test: ShiftTest, card: Card) -> str:
    need = min_per_class(card.decision_threshold.target_sensitivity or 0.95)
    return (
        f"No correction written: the X-rays in {folder} differ from the training X-rays in more "
        f"than their class mix, so re-weighting to an estimated mix could make the model worse. "
        f"Tested: {test.describe()}. A labelled sample of the site is needed: run adapt with "
        "--labels (at least "
        f"{' and '.join(f'{n} {c}' for c, n in need.items())} X-rays), or pass "
        "--force-prior to apply the correction anyway (recorded in the card)."
    )


def _fit_labels(
    card: Card, p: np.ndarray, y: np.ndarray, n_boot: int, seed: int, counts: dict[str, int],
    labels: Path | str | None,
) -> SiteFit:  # fmt: skip
    """The labelled fit, or a `PneumoError` naming the minimum per class."""
    target = card.decision_threshold.target_sensitivity or 0.95
    need = min_per_class(target)
    have = {"NORMAL": int(np.sum(y == 0)), "PNEUMONIA": int(np.sum(y == 1))}
    short = [c for c in need if have[c] < need[c]]
    if short:
        raise DataError(
            f"{labels} has {have['NORMAL']} NORMAL and {have['PNEUMONIA']} PNEUMONIA usable "
            f"X-ray(s) ({_usable(counts)}); a threshold at sensitivity {target:.2f} and its "
            f"figures need at least {need['NORMAL']} NORMAL and {need['PNEUMONIA']} PNEUMONIA."
        )
    return fit_site_labels(p, y, target, seed=seed)
