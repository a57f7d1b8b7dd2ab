"""Audit a chest X-ray folder before training: layout, counts, bad files, duplicates, leakage.

    pneumo-fastai data check data/chest_xray --json check.json
    from pneumo_fastai.datatools.check import check_dataset
    report = check_dataset("data/chest_xray", quick=True)  # quick: headers only, no pixel hashing
    if report.problems: ...  # training would be unsound; report.warnings are worth reading

`problems` are fatal (no train/, a class or a split missing or empty); everything else is a
warning. Duplicates are exact: two files are duplicates when their decoded pixels (as the model
sees them, through `load_xray`) are identical, whatever their names or encodings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import CLASSES, SUBTYPES, TrainConfig
from ..data.images import ImageCheck, check_images
from ..data.layout import (
    IMAGE_KINDS,
    SPLITS,
    TRAIN_SPLITS,
    class_counts,
    list_split,
    relative_name,
    resolve_root,
)
from ..data.names import label_of, patient_id, subtype_of
from ..data.select import Selection, select, training_split
from ..errors import DataError
from ..fileio import write_text_atomic

_DEFAULTS = TrainConfig()


@dataclass(frozen=True)
class FileIssue:
    """A file that training or evaluation cannot use."""

    path: str  # relative to the dataset root
    kind: str  # empty, unreadable (no image header), corrupt (pixels fail), not_image (extension)
    detail: str  # what went wrong


@dataclass(frozen=True)
class DuplicateGroup:
    """Files whose decoded pixels are identical."""

    files: tuple[str, ...]  # relative to the dataset root, sorted

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted({f.split("/")[0] for f in self.files}))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({label_of(f) for f in self.files}))


@dataclass
class DatasetReport:
    """Everything `check_dataset` found; `problems` make training unsound."""

    root: Path  # folder holding train/ (and val/, test/)
    quick: bool  # True: headers only, no pixel hashing (no duplicate groups)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    issues: list[FileIssue] = field(default_factory=list)  # unusable files
    sizes: dict[str, Any] = field(default_factory=dict)  # width/height/aspect summary
    modes: dict[str, int] = field(default_factory=dict)  # PIL mode -> images
    formats: dict[str, int] = field(default_factory=dict)  # PIL format -> images
    bytes_total: int = 0  # sum of image file sizes
    duplicates: list[DuplicateGroup] = field(default_factory=list)  # exact pixel duplicates
    patients: dict[str, int] = field(default_factory=dict)  # split -> distinct patient ids
    shared_patients: list[str] = field(default_factory=list)  # ids in both train/val and test
    subtypes: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> subtype -> images
    mixed_patients: dict[str, int] = field(default_factory=dict)  # ids with bacteria and virus
    split_preview: dict[str, Any] = field(default_factory=dict)  # what the training split does
    problems: list[str] = field(default_factory=list)  # fatal: training would be unsound
    warnings: list[str] = field(default_factory=list)  # worth knowing, not fatal
    selection: Selection | None = field(default=None, repr=False)  # what training would use

    @property
    def ok(self) -> bool:
        """True when nothing fatal was found."""
        return not self.problems

    def balance(self) -> dict[str, dict[str, float | None]]:
        """Per split: PNEUMONIA fraction and majority/minority ratio (None when undefined)."""
        out = {}
        for split, counts in self.counts.items():
            total, smallest = sum(counts.values()), min(counts.values(), default=0)
            out[split] = {
                "pneumonia_fraction": counts.get("PNEUMONIA", 0) / total if total else None,
                "ratio": max(counts.values()) / smallest if smallest else None,
            }
        return out

    def duplicate_summary(self) -> dict[str, int]:
        """Group and file counts of the duplicates, by where the copies sit."""
        groups = self.duplicates
        return {
            "groups": len(groups),
            "files": sum(len(g.files) for g in groups),
            "within_split_groups": sum(len(g.splits) == 1 for g in groups),
            "cross_split_groups": sum(len(g.splits) > 1 for g in groups),
            "test_leak_groups": sum(_leaks_into_test(g.splits) for g in groups),
            "label_conflict_groups": sum(len(g.labels) > 1 for g in groups),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the whole report."""
        return {
            "root": str(self.root),
            "quick": self.quick,
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "counts": self.counts,
            "balance": self.balance(),
            "issues": [vars(i) for i in self.issues],
            "sizes": self.sizes,
            "modes": self.modes,
            "formats": self.formats,
            "bytes_total": self.bytes_total,
            "duplicates": None if self.quick else self.duplicate_summary(),
            "duplicate_groups": [
                {"files": list(g.files), "splits": list(g.splits), "labels": list(g.labels)}
                for g in self.duplicates
            ],
            "patients": self.patients,
            "shared_patients": self.shared_patients,
            "subtypes": self.subtypes,
            "mixed_patients": self.mixed_patients,
            "split_preview": self.split_preview,
        }

    def write_json(self, path: Path | str) -> Path:
        """Write `to_dict()` to `path` atomically; returns the path."""
        return write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def _without_pixels(check: ImageCheck) -> tuple[ImageCheck, str | None]:
    """The check without its decoded pixels, and their sha256 (None when not decoded)."""
    if check.image is None:
        return check, None
    digest = hashlib.sha256(f"{check.image.width}x{check.image.height}:".encode())
    digest.update(check.image.tobytes())
    return dataclasses.replace(check, image=None), digest.hexdigest()


def check_dataset(
    path: Path | str,  # dataset folder (or its parent holding chest_xray/)
    quick: bool = False,  # headers only: skip pixel decoding and duplicate search
    config: TrainConfig = _DEFAULTS,  # the training whose selection and split to preview
    progress: bool = False,  # show a progress bar while reading
) -> DatasetReport:
    """Inspect a dataset in the Kaggle layout and say whether training on it is sound."""
    path = Path(path).expanduser()
    try:
        root = resolve_root(path)
    except DataError as e:
        if not path.is_dir():
            raise
        return DatasetReport(root=path, quick=quick, problems=[str(e)])
    report = DatasetReport(root=root, quick=quick)
    images = _scan_layout(report)
    scanned = check_images(
        [f for split in images.values() for f in split],
        decode=not quick,
        progress=progress,
        what="Reading headers" if quick else "Hashing pixels",
        keep=_without_pixels,
    )
    _summarise_files(report, [check for check, _ in scanned])
    if not quick:
        _find_duplicates(report, scanned)
    _check_patients(report, images)
    _count_subtypes(report, images)
    if not report.problems:
        report.selection = select(config.replace(data=root))
        _preview_split(report, report.selection)
    return report


def _rel(report: DatasetReport, path: Path) -> str:
    return relative_name(path, report.root)


def _scan_layout(report: DatasetReport) -> dict[str, list[Path]]:
    """Image files per split; layout problems, and files that are not images, go in `report`."""
    images: dict[str, list[Path]] = {}
    for split in SPLITS:
        folder = report.root / split
        fatal = report.problems if split in TRAIN_SPLITS else report.warnings
        if not folder.is_dir():
            if split == "test":
                report.warnings.append(
                    "No test/ split: keep an independent test set for final figures."
                )
            continue
        listing = list_split(folder)
        if listing.extra_dirs:
            report.warnings.append(
                f"{split}/ holds folders that are ignored: {', '.join(listing.extra_dirs)}."
            )
        report.counts[split] = listing.counts()
        for cls in listing.missing:
            fatal.append(
                f"{split}/{cls} is missing: every split needs one folder per class "
                f"({', '.join(CLASSES)}). Add it with its images"
                + (", or remove val/ (it is optional)." if split == "val" else ".")
            )
        for other in listing.others:
            report.issues.append(
                FileIssue(_rel(report, other), "not_image", f"not {IMAGE_KINDS}: skipped")
            )
        for cls, found in listing.images.items():
            if not found:
                fatal.append(
                    f"{split}/{cls} holds no {IMAGE_KINDS} images: "
                    + (
                        "training needs images of every class."
                        if split in TRAIN_SPLITS
                        else "evaluation on this split will be one-sided."
                    )
                )
        images[split] = listing.all_images()
        if not images[split]:
            fatal.append(f"The {split}/ split is empty: it holds no images at all.")
    return images


def _summarise_files(report: DatasetReport, checks: Sequence[ImageCheck]) -> None:
    """Issues, size/mode/format distributions and byte total."""
    good = [c for c in checks if c.ok]
    for check in checks:
        if not check.ok:
            report.issues.append(FileIssue(_rel(report, check.path), check.kind, check.reason))
    report.bytes_total = sum(c.bytes for c in checks)
    report.modes = dict(Counter(c.mode for c in good).most_common())
    report.formats = dict(Counter(c.format for c in good).most_common())
    dims = [c.dims for c in good if c.dims is not None]
    if dims:
        widths, heights = [w for w, _ in dims], [h for _, h in dims]
        aspects = [w / h for w, h in dims]
        report.sizes = {
            "distinct": len(set(dims)),
            "most_common": [
                {"width": w, "height": h, "images": n} for (w, h), n in Counter(dims).most_common(5)
            ],
            "width": _spread(widths),
            "height": _spread(heights),
            "aspect": {k: round(v, 3) for k, v in _spread(aspects).items()},
        }
    bad = [i for i in report.issues if i.kind != "not_image"]
    for scope, splits in (("train/val", TRAIN_SPLITS), ("test", ("test",))):
        n = sum(i.path.split("/")[0] in splits for i in bad)
        if n:
            report.warnings.append(
                f"{n} image file(s) in {scope} cannot be read (empty, unreadable or corrupt; see "
                "issues): remove or replace them."
            )
    skipped = sum(i.kind == "not_image" for i in report.issues)
    if skipped:
        report.warnings.append(
            f"{skipped} file(s) in class folders are not images and are skipped."
        )


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _leaks_into_test(splits: Sequence[str]) -> bool:
    return "test" in splits and any(s in TRAIN_SPLITS for s in splits)


def _find_duplicates(
    report: DatasetReport, scanned: Sequence[tuple[ImageCheck, str | None]]
) -> None:
    """Group files with identical decoded pixels."""
    by_digest: dict[str, list[str]] = defaultdict(list)
    for check, digest in scanned:
        if digest is not None:
            by_digest[digest].append(_rel(report, check.path))
    report.duplicates = sorted(
        (DuplicateGroup(tuple(sorted(fs))) for fs in by_digest.values() if len(fs) > 1),
        key=lambda g: g.files,
    )
    summary = report.duplicate_summary()
    if summary["groups"]:
        report.warnings.append(
            f"{summary['groups']} group(s) of exact pixel duplicates ({summary['files']} files): "
            f"{summary['within_split_groups']} within one split, {summary['cross_split_groups']} "
            "across splits."
        )
    if summary["test_leak_groups"]:
        report.warnings.append(
            f"{summary['test_leak_groups']} duplicate group(s) have copies in both train/val and "
            "test: test figures will be optimistic. Remove the copies from one side."
        )
    if summary["label_conflict_groups"]:
        report.warnings.append(
            f"{summary['label_conflict_groups']} duplicate group(s) carry different labels for "
            "the same pixels: check those files."
        )


def _check_patients(report: DatasetReport, images: dict[str, list[Path]]) -> None:
    """Distinct patients per split and patients shared between train/val and test."""
    ids = {split: {patient_id(f) for f in files} for split, files in images.items()}
    report.patients = {split: len(s) for split, s in ids.items()}
    trainval = ids.get("train", set()) | ids.get("val", set())
    report.shared_patients = sorted(trainval & ids.get("test", set()))
    if report.shared_patients:
        report.warnings.append(
            f"{len(report.shared_patients)} patient(s) have images in both train/val and test: "
            "test figures are not on unseen patients."
        )


def _count_subtypes(report: DatasetReport, images: dict[str, list[Path]]) -> None:
    """Images per subtype (NORMAL, BACTERIA, VIRUS, unknown) and patients with both kinds."""
    for split, files in images.items():
        counts = class_counts(files, (*SUBTYPES, None), subtype_of)
        report.subtypes[split] = {(k or "unknown"): v for k, v in counts.items()}
    kinds: dict[str, set[str | None]] = defaultdict(set)
    for f in (f for split in images.values() for f in split):
        if label_of(f) == "PNEUMONIA":
            kinds[patient_id(f)].add(subtype_of(f))
    both = sum({"BACTERIA", "VIRUS"} <= k for k in kinds.values())
    report.mixed_patients = {"pneumonia_patients": len(kinds), "with_both": both}


def _preview_split(report: DatasetReport, selection: Selection) -> None:
    """Split the images the training selects as it will, and in the other mode; count the
    duplicate groups and patients each split puts on both sides."""
    config, files = selection.config, selection.files
    rels = [_rel(report, f) for f in files]
    groups = [g.files for g in report.duplicates]
    preview: dict[str, Any] = {
        "seed": config.splitting_seed, "valid_pct": config.valid_pct, "mode": config.split,
        "images": len(files),
    }  # fmt: skip
    for mode in ("patient", "image"):
        train_idx, valid_idx = training_split(config.replace(split=mode))(files)
        side = dict.fromkeys((rels[i] for i in valid_idx), "valid")
        side.update(dict.fromkeys((rels[i] for i in train_idx), "train"))
        sides_of_patient: dict[str, set[str]] = defaultdict(set)
        for f in files:
            sides_of_patient[patient_id(f)].add(side[_rel(report, f)])
        straddling = sum(len({side[f] for f in g if f in side}) > 1 for g in groups)
        preview[mode] = {
            "train": len(train_idx),
            "valid": len(valid_idx),
            "patients_straddling": sum(len(s) > 1 for s in sides_of_patient.values()),
            "duplicate_groups_straddling": None if report.quick else straddling,
        }
    report.split_preview = preview
    split, seed, valid_pct = config.split, config.splitting_seed, config.valid_pct
    chosen = preview[split]
    if chosen["duplicate_groups_straddling"]:
        report.warnings.append(
            f"The {split} split (seed {seed}, {valid_pct:.0%} valid) puts "
            f"{chosen['duplicate_groups_straddling']} duplicate group(s) on both sides of "
            "train/valid: validation figures will be optimistic."
        )
    if chosen["patients_straddling"]:
        report.warnings.append(
            f"The {split} split (seed {seed}) puts {chosen['patients_straddling']} patient(s) on "
            "both sides of train/valid."
        )
