"""The export of a finished run: the model card built from it, and its files written atomically.

Files: NAME.pkl (fastai Learner), NAME.safetensors (weights only), NAME.history.csv (fastai's
CSVLogger), NAME.valid.csv (validation predictions) and NAME.json, the card (see `card.py`)
listing the others with their sha256. `build_card` makes the card, typed, with `files` empty;
`write_export` fills them in from the files it has just written. Every file is first written
under a temporary name in the export folder and renamed into place only when all of them are
complete, so a failed or interrupted run never replaces a good export. An ensemble's card shares
`card_header` and `write_export` (`ensemble.py`).
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
    DataFacts,
    DecisionThreshold,
    EnsembleCard,
    Exclusion,
    ExportPaths,
    FileEntry,
    InputSpec,
    ModelCard,
    ModelOod,
    Normalization,
    TrainingFacts,
    Validation,
    library_versions,
    research_use,
    timestamp,
)
from ..config import CLASSES, IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from ..data.block import uses_cache
from ..data.exclude import read_exclusions
from ..data.layout import DatasetFiles, class_counts, fingerprint, relative_name
from ..data.names import label_fn
from ..data.preprocess import preprocessing
from ..device import ComputePlan
from ..fileio import sha256_file, staged_files
from ..model import describe
from .ood import FittedDetector

THRESHOLD_RULE = "highest specificity with PNEUMONIA sensitivity >= target, on validation"
CardT = TypeVar("CardT", ModelCard, EnsembleCard)


@dataclass(frozen=True)
class FinishedRun:
    """A fit that ended with its best epoch restored: everything the export is made of."""

    config: TrainConfig
    ds: DatasetFiles  # the dataset folder as discovered
    learn: Learner  # best epoch restored, temperature set on the loss
    plan: ComputePlan  # the precision and memory format the fit ran in
    best_epoch: int
    stopped_at_epoch: int | None  # where Ctrl-C/SIGTERM stopped it, if it did
    balanced_fractions: dict[str, float] | None  # classes drawn in epoch 1 (balanced sampling)
    rows: list[dict[str, float | None]]  # per-epoch losses and metrics
    figures: dict[str, Any]  # `validation_figures` of the fp32 reference outputs
    detector: FittedDetector | None  # the OOD check, when fitted
    phases: dict[str, float]  # wall seconds of each step so far
    distributed: dict[str, Any]  # `DistributedRun.summary`
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
    config, ds, learn, rows, figures = done.config, done.ds, done.learn, done.rows, done.figures
    phases, plan, best_epoch = done.phases, done.plan, done.best_epoch
    train_files = list(learn.dls.train_ds.items)
    valid_files = list(learn.dls.valid_ds.items)
    epochs_run = len(rows)
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
        training=TrainingFacts(
            device=str(learn.dls.device),
            epochs_run=epochs_run,
            best_epoch=best_epoch,
            stopped_early=done.stopped_at_epoch is None and epochs_run < config.epochs,
            interrupted=done.stopped_at_epoch is not None,
            interrupted_at_epoch=done.stopped_at_epoch,
            balanced_first_epoch_fractions=done.balanced_fractions,
            seconds=round(phases["fit"], 1),
            seconds_per_epoch=round(phases["fit"] / max(epochs_run, 1), 1),
            phases=phases,
            precision=plan.precision,
            channels_last=plan.channels_last,
            compute_rule=plan.reason,
            cached_in_ram=uses_cache(learn.dls),
            num_workers=learn.dls.train.fake_l.num_workers,
            distributed=done.distributed,
        ),
        validation=Validation(
            best_epoch=rows[best_epoch],
            argmax=figures["argmax"],
            at_threshold=figures["at_threshold"],
            subtype=figures.get("subtype"),
        ),
        calibration=Calibration(**figures["calibration"]),
        decision_threshold=DecisionThreshold(
            value=figures["threshold"],
            target_sensitivity=config.target_sensitivity,
            rule=THRESHOLD_RULE,
        ),
        ood=None if done.detector is None else ModelOod(**done.detector.facts),
        files={},
    )


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
    finals = [paths.of(kind) for kind in writers]
    with staged_files(paths.card.parent, [*finals, paths.card]) as temps:
        *staged, card_tmp = temps
        for write, tmp in zip(writers.values(), staged, strict=True):
            write(tmp)
        files = {
            kind: FileEntry(name=final.name, sha256=sha256_file(tmp))
            for kind, final, tmp in zip(writers, finals, staged, strict=True)
        }
        written = card.model_copy(update={"files": files})
        card_tmp.write_text(written.to_json())
    return written
