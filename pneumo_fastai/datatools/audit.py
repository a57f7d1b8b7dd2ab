"""Label-noise audit of a `--folds` ensemble: cleanlab on its pooled out-of-fold predictions.

    pneumo-fastai data audit exports/ens.json --out reports/ens-audit
    from pneumo_fastai.datatools.audit import audit_ensemble
    audit = audit_ensemble("exports/ens.json", "reports/ens-audit")

A `--folds K` ensemble predicted every training image with the member that never saw it
(`NAME.valid.csv`), so a confident prediction against an image's folder label is evidence that
the label, not the model, is wrong. cleanlab's `find_label_issues` (confident learning, pruned
by noise rate) flags those images and `get_label_quality_scores` (self-confidence: the
probability of the given label) ranks them. The audit writes

- `label_issues.csv`: every pooled image, lowest label quality first: file (relative to the
  dataset root), label as given, probability (out-of-fold P(PNEUMONIA)), suspect, quality;
- `suspects.png`: a contact sheet of the top suspects for a person to review; an image no
  longer found under the dataset root gets a tile saying "missing".

Only folds ensembles are audited: a `--seeds` ensemble's pooled predictions are on one shared
validation split, and a single model's cover only its own. A subtype ensemble is audited on its
binary decision, NORMAL against PNEUMONIA (BACTERIA and VIRUS both count as PNEUMONIA), as its
pooled predictions hold P(PNEUMONIA) only: a bacteria/virus mix-up is not looked for.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..card import EnsembleCard, card_path_of, read_card
from ..config import CLASSES
from ..data.images import load_xray
from ..errors import DataError, ModelFileError, PneumoError
from ..fileio import staged_files
from ..valid_csv import read_valid

ISSUES_CSV = "label_issues.csv"
SHEET_PNG = "suspects.png"
COLUMNS = ("file", "label", "probability", "suspect", "quality")
_TILE_PX = 256  # thumbnails on the contact sheet are at most this many pixels a side
_NCOLS = 6
_DPI = 100


@dataclass(frozen=True)
class OutOfFold:
    """The pooled out-of-fold predictions of a folds ensemble."""

    name: str  # the ensemble's name
    k: int  # folds
    task: str  # binary or subtype
    root: Path  # dataset folder the files are relative to
    files: list[str]
    labels: list[str]  # as given (subtype: NORMAL, BACTERIA or VIRUS)
    probability: np.ndarray  # calibrated out-of-fold P(PNEUMONIA)

    @property
    def y(self) -> np.ndarray:
        """The binary labels cleanlab audits: 0 NORMAL, 1 PNEUMONIA (any class but NORMAL)."""
        return np.array([int(label != CLASSES[0]) for label in self.labels])


@dataclass(frozen=True)
class Audit:
    """What `audit_ensemble` found and wrote."""

    csv: Path  # every image, lowest label quality first
    sheet: Path  # contact sheet of the top suspects
    oof: OutOfFold
    suspect: np.ndarray  # bool per image, in `oof` order
    quality: np.ndarray  # cleanlab's label quality per image (0 worst, 1 best)
    shown: int  # suspects on the contact sheet
    missing: list[str]  # files of shown suspects not found under the dataset root

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per given label: (suspects, images)."""
        labels = np.array(self.oof.labels)
        return {
            label: (int(self.suspect[labels == label].sum()), int((labels == label).sum()))
            for label in dict.fromkeys(sorted(self.oof.labels, key=_label_order))
        }


def _label_order(label: str) -> tuple[bool, str]:
    return label != CLASSES[0], label  # NORMAL first


def _inside_dataset(name: str) -> bool:
    """Whether a valid.csv file name is relative and cannot climb out of the dataset folder."""
    path = PurePath(name.replace("\\", "/"))
    return bool(name) and not path.is_absolute() and not path.drive and ".." not in path.parts


def read_out_of_fold(ensemble: Path | str, data: Path | str | None = None) -> OutOfFold:
    """The pooled out-of-fold predictions of a folds ensemble's card, its valid file checked."""
    card_path = card_path_of(ensemble)
    card = read_card(card_path)
    fix = (
        "The audit needs the out-of-fold predictions of a folds ensemble: train one with "
        "`pneumo-fastai train --folds 5 --name NAME` and pass EXPORTS/NAME.json."
    )
    if not isinstance(card, EnsembleCard):
        raise ModelFileError(f"{card_path} is a single model's card, not an ensemble. {fix}")
    if card.data.method != "folds":
        raise ModelFileError(
            f"{card_path} is a --{card.data.method} ensemble: its pooled predictions are the "
            f"members' mean on the one validation split they share, not out-of-fold "
            f"predictions of every training image. {fix}"
        )
    valid = read_valid(card, card_path)
    outside = [f for f in valid.files if not _inside_dataset(f)]
    if outside:
        raise ModelFileError(
            f"{card_path.stem}.valid.csv lists {outside[0]!r}, which is not a path inside the "
            f"dataset folder (absolute, or with '..'; {len(outside)} such rows). The audit shows "
            "only the dataset's own images: re-export the ensemble."
        )
    root = Path(card.data.root if data is None else data)
    return OutOfFold(
        card.name, card.data.k, card.task, root, valid.files, valid.labels, valid.probability
    )


def label_issues(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's suspect flag and label quality for binary labels `y` and P(class 1) `p`."""
    pred_probs = np.stack([1 - p, p], axis=1)
    # one process: two classes gain nothing from cleanlab's per-class worker pool
    suspect = find_label_issues(y, pred_probs, n_jobs=1)
    return suspect, get_label_quality_scores(y, pred_probs)


def worst_first(quality: np.ndarray, files: Sequence[str]) -> list[int]:
    """Indices from the lowest label quality up (ties by file name, for a stable order)."""
    return sorted(range(len(files)), key=lambda i: (quality[i], files[i]))


def write_issues_csv(
    path: Path, oof: OutOfFold, suspect: np.ndarray, quality: np.ndarray, order: Sequence[int]
) -> None:
    """Every image in `order`: file, given label, out-of-fold P(PNEUMONIA), suspect, quality."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i in order:
            writer.writerow(
                (oof.files[i], oof.labels[i], repr(float(oof.probability[i])),
                 bool(suspect[i]), repr(float(quality[i])))
            )  # fmt: skip


def _tile(ax: Axes, path: Path) -> bool:
    """Draw the X-ray at `path` on `ax`; a grey "missing" or "unreadable" tile if it fails."""
    ax.set_xticks([])
    ax.set_yticks([])
    if not path.is_file():
        ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=14, color="0.4")
        return False
    try:
        img = load_xray(path, draft=_TILE_PX)
    except DataError:
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=14, color="0.4")
        return True
    img.thumbnail((_TILE_PX, _TILE_PX))
    ax.imshow(np.asarray(img), cmap="gray", vmin=0, vmax=255)
    return True


def contact_sheet(
    oof: OutOfFold, quality: np.ndarray, shown: Sequence[int], n_suspects: int
) -> tuple[Figure, list[str]]:
    """The images `shown` (lowest quality first) with their labels; and the missing files."""
    n = max(1, len(shown))
    ncols = min(_NCOLS, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.6 * ncols, 3.1 * nrows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[len(shown) :]:
        ax.axis("off")
    missing = []
    for rank, (ax, i) in enumerate(zip(axes, shown, strict=False), start=1):
        if not _tile(ax, oof.root / oof.files[i]):
            missing.append(oof.files[i])
        ax.set_title(
            f"#{rank} given {oof.labels[i]}, quality {quality[i]:.3f}\n"
            f"out-of-fold P(PNEUMONIA) {oof.probability[i]:.3f}\n{Path(oof.files[i]).name}",
            fontsize=8,
        )
    if not shown:
        axes[0].text(0.5, 0.5, "cleanlab flagged no label issues", ha="center", va="center")
    fig.suptitle(
        f"{oof.name}: {len(shown)} of {n_suspects} suspect labels among {len(oof.files)} "
        f"images ({oof.k}-fold out-of-fold predictions, cleanlab), lowest label quality first.\n"
        "Review each image: relabel or remove only what a reader confirms.",
        fontsize=10,
    )
    return fig, missing


def audit_ensemble(
    ensemble: Path | str,  # the folds ensemble's card (or its folder)
    out: Path | str,  # folder for label_issues.csv and suspects.png (created if needed)
    data: Path | str | None = None,  # dataset folder if it moved; default: the card's data.root
    top: int = 24,  # suspects on the contact sheet
) -> Audit:
    """Flag likely label errors among an ensemble's training images (see the module docstring)."""
    if top < 1:
        raise PneumoError(f"--top must be at least 1 (got {top}): the suspects to show.")
    oof = read_out_of_fold(ensemble, data)
    suspect, quality = label_issues(oof.y, oof.probability)
    order = worst_first(quality, oof.files)
    shown = [i for i in order if suspect[i]][:top]
    out = Path(out)
    finals = [out / ISSUES_CSV, out / SHEET_PNG]
    with staged_files(out, finals) as (csv_tmp, png_tmp):
        write_issues_csv(csv_tmp, oof, suspect, quality, order)
        fig, missing = contact_sheet(oof, quality, shown, int(suspect.sum()))
        fig.savefig(png_tmp, format="png", dpi=_DPI, bbox_inches="tight")
    return Audit(finals[0], finals[1], oof, suspect, quality, len(shown), missing)
