"""Write and read the three export files atomically: NAME.pkl, NAME.pth, NAME.json (+ history).

The JSON model card describes the pickle and the weights (classes, config, data fingerprint,
validation figures, decision threshold, library versions, sha256 of each file). Every file is
first written under a temporary name in the same folder and renamed into place only when all
of them are complete, so a failed or interrupted run never replaces a good export.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastai
import torch
import torchvision

from .errors import ModelFileError

CARD_SCHEMA_VERSION = 1
REQUIRED_CARD_KEYS: tuple[str, ...] = ("schema_version", "classes", "config", "files", "input")


@dataclass(frozen=True)
class ExportPaths:
    """Where one export's files live."""

    pkl: Path  # fastai Learner pickle (`load_learner`)
    weights: Path  # state dict only, loads without unpickling code
    card: Path  # JSON model card
    history: Path  # per-epoch CSV written by fastai's CSVLogger
    valid: Path  # validation predictions (file, label, probability of PNEUMONIA)

    @classmethod
    def for_name(cls, folder: Path, name: str) -> ExportPaths:
        """The paths of export `name` inside `folder`."""
        folder = Path(folder)
        return cls(
            pkl=folder / f"{name}.pkl",
            weights=folder / f"{name}.pth",
            card=folder / f"{name}.json",
            history=folder / f"{name}.history.csv",
            valid=folder / f"{name}.valid.csv",
        )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions that matter for reloading and reproducing a model."""
    from . import __version__

    return {
        "pneumo_fastai": __version__,
        "fastai": fastai.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def staged_files(folder: Path, finals: list[Path]) -> Iterator[list[Path]]:
    """Temp paths beside `finals`; renamed onto them only if the block completes."""
    folder.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~_umask()
    temps = []
    for final in finals:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.chmod(tmp, mode)
        temps.append(Path(tmp))
    try:
        yield temps
        for tmp, final in zip(temps, finals, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def write_export(
    paths: ExportPaths,
    card: dict[str, Any],  # model card without the `files` section (filled in here)
    write_pkl: Callable[[Path], None],  # writes the Learner pickle to the given path
    write_weights: Callable[[Path], None],  # writes the state dict to the given path
    history_src: Path,  # CSV history to copy beside the export
    valid_rows: list[tuple[str, str, float]],  # (relative file, label, probability of PNEUMONIA)
) -> dict[str, Any]:
    """Write pickle, weights, history, validation predictions and card atomically."""
    finals = [paths.pkl, paths.weights, paths.history, paths.valid, paths.card]
    with staged_files(paths.card.parent, finals) as (pkl, weights, history, valid, card_tmp):
        write_pkl(pkl)
        write_weights(weights)
        history.write_bytes(history_src.read_bytes())
        with open(valid, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "probability"])
            writer.writerows((name, label, repr(p)) for name, label, p in valid_rows)
        files = {
            "pkl": (pkl, paths.pkl),
            "weights": (weights, paths.weights),
            "history": (history, paths.history),
            "valid": (valid, paths.valid),
        }
        card = {
            **card,
            "files": {
                k: {"name": final.name, "sha256": sha256_file(tmp)}
                for k, (tmp, final) in files.items()
            },
        }
        card_tmp.write_text(json.dumps(card, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return card


def read_card(path: Path) -> dict[str, Any]:
    """Load and validate a model card; `path` may be the card, the pickle or the weights file."""
    path = Path(path)
    card_path = path if path.suffix == ".json" else path.with_suffix(".json")
    if not card_path.is_file():
        raise ModelFileError(
            f"Model card {card_path} not found. Pass an export from `pneumo-fastai train` "
            "(NAME.pkl, NAME.pth and NAME.json side by side)."
        )
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"Model card {card_path} is not valid JSON ({e}).") from e
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ModelFileError(
            f"Model card {card_path} lacks {', '.join(missing)}; re-export the model."
        )
    if card["schema_version"] > CARD_SCHEMA_VERSION:
        raise ModelFileError(
            f"Model card {card_path} has schema {card['schema_version']}, newer than this "
            f"pneumo-fastai understands ({CARD_SCHEMA_VERSION}); upgrade pneumo-fastai."
        )
    return card


def verify_file(card: dict[str, Any], card_path: Path, kind: str) -> Path:
    """Path of the card's `kind` file ('pkl', 'weights'), after checking its sha256."""
    entry = card["files"][kind]
    path = Path(card_path).parent / entry["name"]
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; it belongs to model card {card_path}.")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ModelFileError(
            f"{path} does not match its model card (sha256 {actual[:12]}… instead of "
            f"{entry['sha256'][:12]}…): the file was modified or belongs to another export. "
            "Refusing to load it."
        )
    return path
