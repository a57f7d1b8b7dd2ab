"""The export of a finished run: the model card built from it, and its files written atomically.

Files: NAME.pkl (fastai Learner), NAME.safetensors (weights only), NAME.history.csv (fastai's
CSVLogger), NAME.valid.csv (validation predictions, `valid_csv.py`), NAME.ood.safetensors (the
OOD check's statistics, when it is on), NAME.onnx (with --onnx, `record_onnx`) and NAME.json,
the card (see `card.py`)
listing the others with their sha256. `build_card` makes the card, typed, with `files` empty;
`write_export` fills them in from the files it has just written. Every file is first written
under a temporary name in the export folder and flushed to disk; only when all of them are
complete are they switched in, the card last (`card.switch_export`), so a failed or interrupted
run, or a kill during the switch, never leaves files that do not match the card beside them.
An ensemble's card shares `card_header` and `write_export` (`ensemble.py`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastai.learner import Learner

from ..card import (
    CARD_SCHEMA_VERSION,
    Architecture,
    Calibration,
    Card,
    DataFacts,
    DecisionThreshold,
    EnsembleCard,
    Exclusion,
    ExportPaths,
    FileEntry,
    InputSpec,
    ModelCard,
    Normalization,
    TrainingFacts,
    Validation,
    library_versions,
    read_card,
    research_use,
    switch_export,
    timestamp,
)
from ..config import CLASSES, IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from ..data.exclude import read_exclusions
from ..data.layout import DatasetFiles, class_counts, fingerprint, relative_name
from ..data.names import label_fn
from ..data.preprocess import preprocessing
from ..fileio import check_name, sha256_file, temps_beside
from ..model import describe
from .ood_fit import FittedDetector

CardT = TypeVar("CardT", ModelCard, EnsembleCard)


def threshold_rule(on: str = "validation") -> str:
    """How the decision threshold is chosen, `on` which predictions."""
    return f"highest specificity with PNEUMONIA sensitivity >= target, on {on}"


@dataclass(frozen=True)
class ValidationFigures:
    """The card's sections that the fp32 validation outputs give (`train.validation_figures`)."""

    validation: Validation
    calibration: Calibration
    decision_threshold: DecisionThreshold
    probabilities: list[float]  # calibrated P(PNEUMONIA) of each validation image, in order


@dataclass(frozen=True)
class FinishedRun:
    """A fit that ended with its best epoch restored: everything the export is made of."""

    config: TrainConfig
    ds: DatasetFiles  # the dataset folder as discovered
    learn: Learner  # best epoch restored, temperature set on the loss
    training: TrainingFacts  # how the run went
    figures: ValidationFigures  # of the fp32 reference outputs
    detector: FittedDetector | None  # the OOD check, when fitted
    work: Path  # the run's work folder (history.csv)


def card_header(config: TrainConfig, spec: InputSpec) -> dict[str, Any]:
    """The fields every card training writes starts with, a single model's or an ensemble's."""
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "task": config.task,
        "name": config.name,
        "created": timestamp(),
        "classes": list(config.classes),
        "positive_class": CLASSES[1],
        "input": spec,
        "config": config.to_dict(),
        "versions": library_versions(),
        "intended_use": research_use(),
    }


def input_spec(config: TrainConfig) -> InputSpec:
    """The input contract of a network trained with `config`."""
    return InputSpec(
        size=config.size,
        resize="squash",
        channels=3,
        source="8-bit grayscale copied to 3 channels",
        normalize=Normalization(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        preprocessing=preprocessing(config).describe(),
    )


def build_card(done: FinishedRun) -> ModelCard:
    """The model card of a finished run, its `files` empty until `write_export` fills them."""
    config, ds, learn = done.config, done.ds, done.learn
    train_files = list(learn.dls.train_ds.items)
    valid_files = list(learn.dls.valid_ds.items)
    return ModelCard(
        **card_header(config, input_spec(config)),
        architecture=Architecture(
            body="resnet34",
            head=describe(learn.model[1]),
            param_groups=["stem..layer3", "layer4", "head"],
            frozen="stem..layer3 (BatchNorm trains)" if config.pretrained else "nothing",
        ),
        data=DataFacts(
            root=str(ds.root.resolve()),
            split_mode=config.split,
            seed=config.splitting_seed,
            valid_pct=config.valid_pct,
            n_train=len(train_files),
            n_valid=len(valid_files),
            train_counts=class_counts(train_files, config.classes, label_fn(config.task)),
            valid_counts=class_counts(valid_files, config.classes, label_fn(config.task)),
            train_fingerprint=fingerprint(train_files, ds.root),
            valid_fingerprint=fingerprint(valid_files, ds.root),
            skipped_files=len(ds.skipped),
            excluded=_excluded(config, ds, train_files + valid_files),
        ),
        training=done.training,
        validation=done.figures.validation,
        calibration=done.figures.calibration,
        decision_threshold=done.figures.decision_threshold,
        ood=None if done.detector is None else done.detector.ood,
        files={},
    )


def record_onnx(card_path: Path) -> Card:
    """`export onnx` for a fresh export: the graph written and listed in the card; the card."""
    from ..inference.onnx_export import export_onnx

    export_onnx(card_path)
    return read_card(card_path)


def _excluded(config: TrainConfig, ds: DatasetFiles, used: list[Path]) -> Exclusion | None:
    """The card's record of `--exclude`: the list, its sha256, and the images it removed."""
    if config.exclude is None:
        return None
    listed = read_exclusions(config.exclude)
    present = {relative_name(f, ds.root) for f in ds.files} & listed.files
    return Exclusion(
        source=str(config.exclude),
        sha256=listed.sha256,
        listed=len(listed.files),
        removed=len(present - {relative_name(f, ds.root) for f in used}),
    )


def write_valid_csv(path: Path, rows: Sequence[tuple]) -> None:
    """Validation predictions: relative file, label, P(PNEUMONIA) at full precision[, OOD score]."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        header = ["file", "label", "probability", "ood_score"]
        writer.writerow(header[: len(rows[0]) if rows else 3])
        writer.writerows((name, label, *map(repr, values)) for name, label, *values in rows)


def write_export(
    paths: ExportPaths,
    card: CardT,  # `build_card` or `build_ensemble_card`: every section but `files`
    writers: dict[str, Callable[[Path], None]],  # kind (pkl, weights, ...) -> writes that file
) -> CardT:
    """Write every file and then the card listing them with their sha256, all atomically."""
    check_name(paths.card.stem)
    finals = [paths.of(kind) for kind in writers]
    with temps_beside(finals) as staged:
        for write, tmp in zip(writers.values(), staged, strict=True):
            write(tmp)
        files = {
            kind: FileEntry(name=final.name, sha256=sha256_file(tmp))
            for kind, final, tmp in zip(writers, finals, staged, strict=True)
        }
        written = card.model_copy(update={"files": files})
        switch_export(paths.card, dict(zip(staged, finals, strict=True)), written)
    return written
