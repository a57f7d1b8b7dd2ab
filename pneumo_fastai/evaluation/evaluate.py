"""Evaluate an export on a held-out test folder: figures with patient-bootstrap intervals.

    pneumo-fastai evaluate exports/pneumo_resnet34.json --data data/chest_xray

    from pneumo_fastai.evaluation.evaluate import evaluate
    ev = evaluate("exports/pneumo_resnet34.json", data="data/chest_xray")
    ev.summaries["plain"]["card"]["metrics"]["sensitivity"]  # {"value", "ci_low", "ci_high"}

The test set never chooses anything: figures are given at the argmax rule (0.5), at the model
card's threshold (chosen on validation at training time) and, on request, at a threshold re-chosen
on the validation predictions stored beside the card (`NAME.valid.csv`) for a target sensitivity.
Bootstrap intervals resample whole patients where file names carry patient ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastai.data.core import TfmdDL
from fastai.torch_core import set_seed
from sklearn.metrics import classification_report

from ..config import CLASSES
from ..data.images import check_images
from ..data.layout import (
    IMAGE_KINDS,
    class_counts,
    find_test_folder,
    fingerprint,
    list_split,
    relative_name,
)
from ..data.names import has_patient_id, label_fn, label_of, patient_id
from ..data.select import task_files
from ..errors import DataError, ModelFileError, PneumoError
from ..figures.metrics import choose_threshold, multiclass_summary, summarize
from ..fileio import sha256_file
from ..inference.loading import ExportedModel, load_export
from ..inference.predict import XrayClassifier
from ..progress import track
from ..valid_csv import read_valid

REPORTS = Path("reports")  # default parent of the report folder reports/NAME/
ARGMAX_THRESHOLD = 0.5  # two classes: argmax picks PNEUMONIA where P(PNEUMONIA) >= 0.5
MODE_NAMES = {"plain": "plain", "tta": "TTA"}  # how reports and plots name the two passes


@dataclass(frozen=True)
class SkippedFile:
    """A file in a class folder that was not evaluated, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class EvalSet:
    """The readable images of a test folder, and every file left out with its reason."""

    folder: Path  # the folder holding NORMAL/ and PNEUMONIA/
    root: Path  # file names in reports and fingerprints are relative to this (folder's parent)
    files: tuple[Path, ...]  # evaluated images, sorted by relative path
    skipped: tuple[SkippedFile, ...]  # not evaluated: not an image, unreadable, or misplaced

    def labels(self) -> np.ndarray:
        """0 (NORMAL) / 1 (PNEUMONIA) per file, from its class folder."""
        return np.array([CLASSES.index(label_of(f)) for f in self.files], dtype=np.int64)

    def patients(self) -> list[str]:
        """Patient id per file (the file stem where the name carries none)."""
        return [patient_id(f) for f in self.files]

    def grouped_by_patient(self) -> bool:
        """Whether any file name carried a patient id (else the bootstrap resamples images)."""
        return any(has_patient_id(f) for f in self.files)

    def counts(self) -> dict[str, int]:
        """Evaluated images per class."""
        return class_counts(self.files)

    def relative(self, path: Path) -> str:
        """`path` relative to `root`, with forward slashes."""
        return relative_name(path, self.root)

    def fingerprint(self) -> str:
        """sha256 of the evaluated files' relative paths."""
        return fingerprint(self.files, self.root)


def format_threshold(t: float) -> str:
    """A threshold with enough digits to tell 0.99997 from 1."""
    return f"{t:.3f}" if 0.01 <= t <= 0.99 else f"{t:.6g}"


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold on P(PNEUMONIA) and where it came from (never the test set)."""

    name: str  # argmax, card or target
    threshold: float
    source: str  # one sentence for the report

    @property
    def label(self) -> str:
        """Name and threshold, for legends and column headers."""
        return f"{self.name} (t = {format_threshold(self.threshold)})"


@dataclass
class EvalRun:
    """An export's probabilities on a test set, with everything plots need to redo inference."""

    exported: ExportedModel
    test_set: EvalSet
    dl: TfmdDL  # sequential labelled loader over `test_set.files`
    probabilities: dict[str, np.ndarray]  # "plain" and, with TTA, "tta": P(PNEUMONIA) per file
    points: tuple[OperatingPoint, ...]  # argmax, card[, target]; the last is the decision
    class_probs: np.ndarray | None = None  # (n, n_classes), plain, for 3-class models
    ood: np.ndarray | None = None  # per file, flagged as unlike the training X-rays; None: no check

    @property
    def name(self) -> str:
        """The export's name (the card file's stem)."""
        return self.exported.card_path.stem

    @property
    def decision(self) -> OperatingPoint:
        """The operating point predictions are reported at."""
        return self.points[-1]

    @property
    def y(self) -> np.ndarray:
        """True labels, 0/1."""
        return self.test_set.labels()

    @property
    def class_labels(self) -> np.ndarray:
        """True class indices in the model's classes (a subtype model's from the file names)."""
        label, classes = label_fn(self.exported.card.task), self.exported.card.classes
        return np.array([classes.index(label(f)) for f in self.test_set.files], dtype=np.int64)


@dataclass
class Evaluation:
    """Figures of one evaluation: summaries per inference mode and operating point."""

    run: EvalRun
    summaries: dict[str, dict[str, dict[str, Any]]]  # mode -> point -> `metrics.summarize` dict
    reports: dict[str, dict[str, str]]  # mode -> point -> scikit-learn classification_report
    n_boot: int  # bootstrap resamples per interval
    seed: int  # bootstrap (and TTA augmentation) seed
    subtype: dict[str, Any] | None = None  # `metrics.multiclass_summary`, for 3-class models
    ood: dict[str, Any] | None = None  # `ood_figures`; None for exports without the OOD check


def load_test_set(folder: Path | str, progress: bool = False) -> EvalSet:
    """List a test folder's images, check their headers, and record every file left out.

    Files whose pixels turn out not to decode are left out later, when they are predicted
    (`run_test_set`), so that each image is decoded once.
    """
    folder = Path(folder)
    listing = list_split(folder)
    if listing.missing:
        raise DataError(
            f"{folder / listing.missing[0]} is missing. A test folder needs one sub-folder per "
            f"class ({', '.join(CLASSES)}) with the images of that class."
        )
    skipped = [SkippedFile(p, f"not a {IMAGE_KINDS} image") for p in listing.others]
    files = []
    for cls, images in listing.images.items():
        for p in images:
            if p.parent == folder / cls:
                files.append(p)
            else:
                why = f"in a sub-folder of {cls}/; labels come from the class folder itself"
                skipped.append(SkippedFile(p, why))
    checks = check_images(files, decode=False, progress=progress)
    skipped += [SkippedFile(c.path, c.reason or "unreadable") for c in checks if not c.ok]
    readable = [c.path for c in checks if c.ok]
    return _test_set(folder, readable, skipped)


def _test_set(folder: Path, readable: Sequence[Path], skipped: Sequence[SkippedFile]) -> EvalSet:
    """An `EvalSet`, sorted, after checking that every class kept a readable image."""
    for cls in CLASSES:
        if not any(label_of(f) == cls for f in readable):
            raise DataError(
                f"{folder / cls} holds no readable {IMAGE_KINDS} images "
                f"({sum(s.path.parent.name == cls for s in skipped)} file(s) left out). "
                "Every class needs images to evaluate."
            )
    root = folder.parent
    return EvalSet(
        folder=folder,
        root=root,
        files=tuple(sorted(readable, key=lambda p: relative_name(p, root))),
        skipped=tuple(sorted(skipped, key=lambda s: relative_name(s.path, root))),
    )


def _predict_all(
    classifier: XrayClassifier, files: Sequence[Path], bs: int, tta: bool, progress: bool
) -> list:
    """Every file's `Prediction`, with a progress bar."""
    what = "Predicting (TTA)" if tta else "Predicting"
    preds = classifier.iter_predictions(files, bs=bs, tta=tta)
    return list(track(preds, len(files), what, enabled=progress))


def read_valid_predictions(exported: ExportedModel) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0/1) and P(PNEUMONIA) of the validation split (`NAME.valid.csv`, `read_valid`)."""
    valid = read_valid(exported.card, exported.card_path)
    return valid.y, valid.probability


def operating_points(
    exported: ExportedModel,
    target_sensitivity: float | None = None,  # re-choose on validation predictions for this
) -> tuple[OperatingPoint, ...]:
    """Argmax, the card's threshold, and optionally one re-chosen on validation (never test)."""
    card_target = exported.card.decision_threshold.target_sensitivity
    points = [
        OperatingPoint("argmax", ARGMAX_THRESHOLD, "argmax rule: PNEUMONIA where P >= 0.5"),
        OperatingPoint(
            "card",
            exported.threshold,
            "model card: chosen on the validation split at training time"
            + (f" for sensitivity >= {card_target:g}" if card_target is not None else ""),
        ),
    ]
    if target_sensitivity is not None:
        if not 0 < target_sensitivity <= 1:
            raise PneumoError(f"--target-sensitivity must be in (0, 1]; got {target_sensitivity}.")
        y, p = read_valid_predictions(exported)
        try:
            threshold = choose_threshold(y, p, target_sensitivity)
        except ValueError as e:
            raise ModelFileError(f"Cannot re-choose the threshold on validation: {e}.") from e
        source = (
            f"re-chosen on the validation predictions beside the card ({len(y)} images) for "
            f"sensitivity >= {target_sensitivity:g}; the test set was not used"
        )
        points.append(OperatingPoint("target", threshold, source))
    return tuple(points)


def run_test_set(
    model: Path | str,  # export: NAME.json, NAME.safetensors or NAME.pkl
    data: Path | str | None = None,  # dataset root; its test/ split is evaluated
    test: Path | str | None = None,  # or any folder with NORMAL/ and PNEUMONIA/
    *,
    trust_pickle: bool = False,  # load the fastai pickle instead of the weights-only file
    device: str = "auto",
    precision: str = "auto",  # auto (the device rule), fp32 or bf16
    bs: int = 64,
    num_workers: int | None = None,  # loader workers of the plots' passes
    tta: bool = False,  # also run fastai's test-time augmentation
    target_sensitivity: float | None = None,
    seed: int = 0,  # seeds TTA's augmentation
    progress: bool = False,
) -> EvalRun:
    """Load the export and the test set, and compute P(PNEUMONIA) for every readable image.

    Each image is decoded once for the plain pass (as `predict` does); a file that cannot be
    decoded is left out with the reason, like a file of the wrong kind or place.
    """
    if bs < 1:
        raise PneumoError(f"--bs must be at least 1; got {bs}.")
    exported = load_export(model, trust_pickle=trust_pickle, device=device, precision=precision)
    points = operating_points(exported, target_sensitivity)
    listed = load_test_set(find_test_folder(data, test), progress)
    classifier = XrayClassifier(exported)
    candidates, unlabelled = task_files(listed.files, exported.card.task)
    preds = _predict_all(classifier, candidates, bs, tta=False, progress=progress)
    failed = [SkippedFile(Path(p.file), p.error) for p in preds if not p.ok]
    failed += [SkippedFile(f, "its name says neither bacteria nor virus") for f in unlabelled]
    readable = [Path(p.file) for p in preds if p.ok]
    test_set = _test_set(listed.folder, readable, [*listed.skipped, *failed])
    probabilities = {"plain": np.array([p.probability for p in preds if p.ok], dtype=np.float64)}
    per_class = [p.class_probabilities for p in preds if p.ok]
    class_probs = (
        np.array([[d[c] for c in exported.card.classes] for d in per_class])
        if per_class and per_class[0] is not None
        else None
    )
    flags = [p.ood for p in preds if p.ok]
    ood = None if any(f is None for f in flags) else np.array(flags, dtype=bool)
    if tta:
        set_seed(seed)
        tta_preds = _predict_all(classifier, test_set.files, bs, tta=True, progress=progress)
        probabilities["tta"] = np.array([p.probability for p in tta_preds], dtype=np.float64)
    dl = exported.dataloader(test_set.files, labelled=True, bs=bs, num_workers=num_workers)
    return EvalRun(exported, test_set, dl, probabilities, points, class_probs, ood)


def report_text(y: np.ndarray, p: np.ndarray, threshold: float) -> str:
    """scikit-learn's classification report of the decision `p >= threshold`."""
    pred = (p >= threshold).astype(np.int64)
    return classification_report(
        y, pred, labels=[0, 1], target_names=list(CLASSES), digits=3, zero_division=np.nan
    )


def compute_figures(
    y: np.ndarray,  # true labels, 0/1
    probabilities: dict[str, np.ndarray],  # mode ("plain", "tta") -> P(PNEUMONIA)
    points: Sequence[OperatingPoint],
    groups: Sequence[str] | None,  # patient ids for the bootstrap; None resamples images
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, str]]]:
    """Summaries (point values, bootstrap CIs, counts) and report texts per mode and point."""
    summaries = {
        mode: {pt.name: summarize(y, p, pt.threshold, groups, n_boot, seed) for pt in points}
        for mode, p in probabilities.items()
    }
    reports = {
        mode: {pt.name: report_text(y, p, pt.threshold) for pt in points}
        for mode, p in probabilities.items()
    }
    return summaries, reports


def evaluate(
    model: Path | str,  # export: NAME.json, NAME.safetensors or NAME.pkl
    data: Path | str | None = None,  # dataset root; its test/ split is evaluated
    test: Path | str | None = None,  # or any folder with NORMAL/ and PNEUMONIA/
    *,
    trust_pickle: bool = False,
    device: str = "auto",
    precision: str = "auto",
    bs: int = 64,
    num_workers: int | None = None,
    tta: bool = False,
    target_sensitivity: float | None = None,
    n_boot: int = 1000,  # bootstrap resamples per interval
    seed: int = 0,  # bootstrap and TTA seed
    progress: bool = False,
) -> Evaluation:
    """Run the export on the test set and compute every figure with a 95% bootstrap interval."""
    if n_boot < 1:
        raise PneumoError(f"--n-boot must be at least 1; got {n_boot}.")
    run = run_test_set(
        model, data, test, trust_pickle=trust_pickle, device=device, precision=precision,
        bs=bs, num_workers=num_workers, tta=tta, target_sensitivity=target_sensitivity,
        seed=seed, progress=progress,
    )  # fmt: skip
    summaries, reports = compute_figures(
        run.y, run.probabilities, run.points, run.test_set.patients(), n_boot, seed
    )
    subtype = None
    if run.class_probs is not None:
        subtype = multiclass_summary(
            run.class_labels, run.class_probs, run.exported.card.classes,
            run.test_set.patients(), n_boot, seed,
        )  # fmt: skip
    return Evaluation(
        run, summaries, reports, n_boot, seed, subtype, ood_figures(run, n_boot, seed)
    )


def ood_figures(run: EvalRun, n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """How many test images the OOD check flagged, and the decision's figures without them.

    `without_flagged` is the plain pass at the decision threshold on the unflagged images, or
    None when nothing was flagged (the figures are the headline ones) or a class has no image
    left. None altogether for an export without the check.
    """
    if run.ood is None:
        return None
    keep = ~run.ood
    y, p = run.y[keep], run.probabilities["plain"][keep]
    patients = [g for g, k in zip(run.test_set.patients(), keep, strict=True) if k]
    usable = bool(run.ood.any()) and len(set(y.tolist())) == 2
    return {
        "n_images": len(run.ood),
        "flagged": int(run.ood.sum()),
        "flagged_by_class": {cls: int(run.ood[run.y == i].sum()) for i, cls in enumerate(CLASSES)},
        "threshold": run.decision.name,
        "without_flagged": (
            summarize(y, p, run.decision.threshold, patients, n_boot, seed) if usable else None
        ),
    }


def model_facts(exported: ExportedModel) -> dict[str, Any]:
    """Which export was evaluated: name, card sha256, validation fingerprint, how it loaded."""
    card = exported.card
    return {
        "name": card.name,
        "card": str(exported.card_path),
        "card_sha256": sha256_file(exported.card_path),
        "valid_fingerprint": card.data.valid_fingerprint,
        "loaded_from": "pickle" if exported.from_pickle else "weights",
        "device": str(exported.device),
        "precision": exported.plan.precision,
        "input_size": exported.config.size,
    }
