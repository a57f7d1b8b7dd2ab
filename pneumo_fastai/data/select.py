"""Which images a run uses: one pass over the dataset folder, then the task's labels, `--exclude`
and `--limit`, and the train/valid split the training makes of them.

    from pneumo_fastai.data.select import select, training_split
    chosen = select(TrainConfig(data="../shared/data/chest_xray", limit=100))
    chosen.files, chosen.notes                   # the images, and what was left out and why
    train_idx, valid_idx = training_split(chosen.config)(chosen.files)

`train`, `data check` (its split preview), `evaluate` (the task's labels) and the benches select
here, so that what `data check` warns about is the split `train` makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Task, TrainConfig
from ..errors import DataError
from .exclude import read_exclusions
from .layout import DatasetFiles, discover, relative_name
from .names import subtype_of
from .split import SeededSplitter, limit_per_class


@dataclass(frozen=True)
class Selection:
    """The images a run uses, what it found in the folder, and what it left out (as log lines)."""

    config: TrainConfig  # the settings it was selected for
    dataset: DatasetFiles  # every training image found (train + val), and the skipped files
    files: tuple[Path, ...]  # the images the run uses, in the dataset's order
    notes: tuple[str, ...]  # what was skipped or left out, and why


def task_files(files: Sequence[Path], task: Task) -> tuple[list[Path], list[Path]]:
    """`files` the task can label, and those it cannot (subtype: names saying neither bacteria
    nor virus; never guessed)."""
    if task != "subtype":
        return list(files), []
    labelled = [f for f in files if subtype_of(f) is not None]
    return labelled, [f for f in files if subtype_of(f) is None]


def training_split(config: TrainConfig) -> SeededSplitter:
    """The splitter of `config`'s training: patient or image mode, or one of its folds."""
    return SeededSplitter(
        config.valid_pct, config.splitting_seed, config.split, config.folds, config.fold or 0,
        config.task,
    )  # fmt: skip


def dataset_folder(config: TrainConfig) -> Path:
    """`config.data`, or a clear error when no dataset was given."""
    if config.data is None:
        raise DataError("No dataset given: pass --data PATH or set PNEUMO_DATA.")
    return Path(config.data)


def _shown(files: Sequence[Path]) -> str:
    return ", ".join(f.name for f in files[:5])


def select(config: TrainConfig, dataset: DatasetFiles | None = None) -> Selection:
    """The images `config` trains on: `dataset` (else `config.data` discovered once), less the
    files its task cannot label and those `--exclude` lists, then `--limit` per class."""
    if dataset is None:
        dataset = discover(dataset_folder(config))
    notes = []
    if dataset.skipped:
        notes.append(
            f"Skipping {len(dataset.skipped)} non-image file(s) in the class folders: "
            f"{_shown(dataset.skipped)}"
        )
    files, unlabelled = task_files(dataset.files, config.task)
    if unlabelled:
        notes.append(
            f"Leaving out {len(unlabelled)} PNEUMONIA file(s) whose name says neither bacteria "
            f"nor virus (never guessed): {_shown(unlabelled)}"
        )
    if config.exclude is not None:
        listed = read_exclusions(config.exclude)
        kept = [f for f in files if relative_name(f, dataset.root) not in listed.files]
        unknown = len(listed.files) - (len(files) - len(kept))
        notes.append(
            f"Leaving out {len(files) - len(kept)} training image(s) listed in {listed.path}"
            + (f" ({unknown} listed name(s) are not in {dataset.root})" if unknown else "")
            + "."
        )
        files = kept
    if config.limit is not None:
        files = limit_per_class(files, config.limit, config.splitting_seed)
    return Selection(config, dataset, tuple(files), tuple(notes))
