"""Ensembles as a first-class export: K patient folds, or N seeds on one split.

    pneumo-fastai train --data DATA --no-pretrained --size 128 --folds 5 --name ens
    from pneumo_fastai.training.ensemble import train_ensemble
    result = train_ensemble(TrainConfig(data=..., folds=5, name="ens"))

Members are ordinary single-model exports in `EXPORTS/NAME.members/` (`NAME-fold0.json`, ...,
or `NAME-seed42.json`, ...), each trained by `train` and calibrated on its own validation logits.
`EXPORTS/NAME.json` is the ensemble's card: its members with the sha256 of each member's card
and files, and the decision threshold chosen on
- folds: the pooled out-of-fold predictions (every training image predicted, calibrated, by
  the member that never saw it), applied to the mean of the members at inference;
- seeds: the mean of the members' predictions on their shared validation split.
`NAME.valid.csv` beside it holds those pooled predictions. A member whose export is complete
and was trained with the same recipe is not retrained, so an interrupted run picks up where it
stopped; `members=[i]` re-runs member i alone.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..card import (
    CARD_SCHEMA_VERSION,
    EnsembleCard,
    ExportPaths,
    ModelCard,
    library_versions,
    parse_card,
    read_card,
)
from ..config import CLASSES, TrainConfig
from ..data.layout import class_counts, fingerprint
from ..errors import Interrupted, ModelFileError, PneumoError
from ..evaluation.metrics import binary_metrics, choose_threshold, nan_to_none
from ..fileio import sha256_file, staged_files
from ..inference.ood import conformal_threshold
from .export import THRESHOLD_RULE, write_valid_csv
from .train import train

Log = Callable[[str], None]
# Fields that change how a run is computed, not what it learns: a member trained with other
# values of these is still the same member.
RUNTIME_FIELDS = frozenset(
    {"data", "exports", "name", "num_workers", "cache", "device", "precision", "channels_last",
     "sync_bn", "onnx"}
)  # fmt: skip
COMBINE = "mean of the members' probabilities, each softmax(logits / member temperature)"


@dataclass(frozen=True)
class EnsembleResult:
    """What an ensemble run produced."""

    card_path: Path  # the ensemble's card, EXPORTS/NAME.json
    card: EnsembleCard
    members: list[Path]  # the members' cards
    trained: list[int]  # members trained by this run (the others were already complete)


def members_folder(config: TrainConfig) -> Path:
    """Where an ensemble's members are exported."""
    return Path(config.exports) / f"{config.name}.members"


def member_configs(config: TrainConfig) -> list[TrainConfig]:
    """One single-model config per member of an ensemble config."""
    folder = members_folder(config)
    if config.folds:
        return [
            config.replace(exports=folder, name=f"{config.name}-fold{k}", fold=k, onnx=False)
            for k in range(config.folds)
        ]
    seeds = range(config.seed, config.seed + config.seeds)
    return [
        config.replace(exports=folder, name=f"{config.name}-seed{s}", seed=s, seeds=0, onnx=False)
        for s in seeds
    ]


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}


def finished_member(config: TrainConfig) -> ModelCard | None:
    """The member's card when its export is complete, uninterrupted and of the same recipe."""
    paths = ExportPaths.for_name(config.exports, config.name)
    if not paths.card.is_file():
        return None
    try:
        card = read_card(paths.card)
    except ModelFileError:
        return None
    if not isinstance(card, ModelCard) or card.training.interrupted:
        return None
    if _recipe(card.config) != _recipe(config.to_dict()):
        return None
    return card


def _read_valid(card_path: Path) -> list[tuple[str, str, float]]:
    with open(card_path.with_suffix(".valid.csv"), newline="") as f:
        return [(r["file"], r["label"], float(r["probability"])) for r in csv.DictReader(f)]


def pooled_predictions(method: str, cards: Sequence[Path]) -> list[tuple[str, str, float]]:
    """(file, label, probability) the threshold is chosen on (see the module docstring)."""
    tables = [_read_valid(c) for c in cards]
    if method == "folds":
        rows = [row for table in tables for row in table]
        files = [r[0] for r in rows]
        if len(set(files)) != len(files):
            raise PneumoError("The folds' validation sets overlap: an image is out of fold twice.")
        return sorted(rows)
    order = [r[0] for r in tables[0]]
    for table in tables[1:]:
        if [r[0] for r in table] != order:
            raise PneumoError("The seed members were validated on different images.")
    mean = np.mean([[r[2] for r in table] for table in tables], axis=0)
    return [(f, label, float(p)) for (f, label, _), p in zip(tables[0], mean, strict=True)]


def build_ensemble_card(
    config: TrainConfig, member_cards: Sequence[ModelCard], member_paths: Sequence[Path],
    card_path: Path, pooled: Sequence[tuple[str, str, float]],
) -> dict[str, Any]:  # fmt: skip
    """The ensemble card's fields (the `files` section is added when writing)."""
    method = "folds" if config.folds else "seeds"
    y = np.array([int(row[1] != CLASSES[0]) for row in pooled])  # subtype labels: not NORMAL
    p = np.array([row[2] for row in pooled])
    threshold = choose_threshold(y, p, config.target_sensitivity)
    root = Path(member_cards[0].data.root)
    files = [root / row[0] for row in pooled]
    first = member_cards[0]
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "kind": "ensemble",
        "task": first.task,
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": first.classes,
        "positive_class": first.positive_class,
        "input": first.input.model_dump(),
        "config": config.to_dict(),
        "members": [
            {
                "name": card.name,
                "card": path.relative_to(card_path.parent).as_posix(),
                "sha256": sha256_file(path),
                "files": {k: v.model_dump() for k, v in card.files.items()},
            }
            for card, path in zip(member_cards, member_paths, strict=True)
        ],
        "combine": COMBINE,
        "data": {
            "root": str(root),
            "method": method,
            "k": len(member_cards),
            "n_valid": len(pooled),
            "valid_counts": class_counts(files),
            "valid_fingerprint": fingerprint(files, root),
        },
        "training": {
            "seconds": round(sum(c.training.seconds for c in member_cards), 1),
            "members": [
                {
                    "name": c.name,
                    "epochs_run": c.training.epochs_run,
                    "best_epoch": c.training.best_epoch,
                    "seconds": c.training.seconds,
                    "temperature": c.temperature,
                }
                for c in member_cards
            ],
        },
        "validation": {
            "best_epoch": {},
            "argmax": nan_to_none(binary_metrics(y, p, 0.5)),
            "at_threshold": nan_to_none(binary_metrics(y, p, threshold)),
        },
        "decision_threshold": {
            "value": float(threshold),
            "target_sensitivity": config.target_sensitivity,
            "rule": THRESHOLD_RULE.replace(
                "on validation",
                "on the pooled out-of-fold predictions, applied to the members' mean"
                if method == "folds"
                else "on the mean of the members' validation predictions",
            ),
        },
        "versions": library_versions(),
        **({"ood": ensemble_ood(member_cards, pooled)} if len(pooled[0]) > 3 else {}),
    }


def ensemble_ood(member_cards: Sequence[ModelCard], pooled: Sequence[tuple]) -> dict[str, Any]:
    """The ensemble's OOD record: the members' mean score, thresholded on the pooled scores."""
    scores = np.array([row[3] for row in pooled])
    first = member_cards[0].ood
    threshold = conformal_threshold(scores, scores, first.alpha)
    return {
        "method": f"mean of the members' {first.method} scores",
        "features": first.features,
        "alpha": first.alpha,
        "threshold": threshold,
        "threshold_rule": "(n+1) conformal quantile at 1 - alpha of the pooled validation scores "
        "(folds: each image scored by the member that did not train on it)",
        "n_train": sum(c.ood.n_train for c in member_cards),
        "n_valid": len(scores),
        "valid_flagged": float((scores > threshold).mean()),
    }


def write_ensemble(card_path: Path, fields: dict[str, Any], pooled) -> EnsembleCard:
    """Write the pooled predictions and the ensemble card, atomically."""
    valid_path = card_path.with_suffix(".valid.csv")
    with staged_files(card_path.parent, [valid_path, card_path]) as (valid, card_tmp):
        write_valid_csv(valid, pooled)
        files = {"valid": {"name": valid_path.name, "sha256": sha256_file(valid)}}
        card = parse_card({**fields, "files": files}, "the new ensemble card")
        card_tmp.write_text(card.to_json())
    return card


def train_ensemble(
    config: TrainConfig,  # with folds >= 2 or seeds >= 2
    *,
    members: Sequence[int] | None = None,  # re-run only these members (0-based)
    progress: bool = True,
    log: Log = print,
) -> EnsembleResult:
    """Train (or finish) every member, then write the ensemble card (see the module docstring)."""
    if not (config.folds or config.seeds) or config.fold is not None:
        raise PneumoError("train_ensemble needs --folds K or --seeds N (K, N >= 2).")
    configs = member_configs(config)
    chosen = set(range(len(configs)) if members is None else members)
    if not chosen <= set(range(len(configs))):
        raise PneumoError(f"--member must be between 0 and {len(configs) - 1}.")
    trained, cards = [], []
    for i, member in enumerate(configs):
        done = finished_member(member)
        if done is not None and (members is None or i not in chosen):
            log(f"Member {i + 1}/{len(configs)} {member.name}: already trained, kept.")
            cards.append(done)
            continue
        if i not in chosen:
            raise PneumoError(
                f"Member {member.name} is not trained yet: run the ensemble without --member."
            )
        log(f"Member {i + 1}/{len(configs)}: {member.name}")
        result = train(member, progress=progress, log=log)
        trained.append(i)
        if result.card.training.interrupted:
            raise Interrupted(f"Stopped during member {member.name}; its best epoch is exported.")
        cards.append(result.card)
    paths = [ExportPaths.for_name(c.exports, c.name).card for c in configs]
    card_path = ExportPaths.for_name(config.exports, config.name).card
    pooled = pooled_predictions("folds" if config.folds else "seeds", paths)
    fields = build_ensemble_card(config, cards, paths, card_path, pooled)
    card = write_ensemble(card_path, fields, pooled)
    if config.onnx:
        from ..inference.onnx_export import export_onnx

        export_onnx(card_path)
        card = read_card(card_path)
    v = card.validation.at_threshold
    log(
        f"Ensemble of {len(cards)} ({card.data.method}): pooled validation accuracy "
        f"{v['accuracy']:.3f}, sensitivity {v['sensitivity']:.3f}, specificity "
        f"{v['specificity']:.3f} at threshold {card.decision_threshold.value:.3f}, ROC AUC "
        f"{v['roc_auc']:.3f}. Wrote {card_path}."
    )
    return EnsembleResult(card_path, card, paths, trained)
