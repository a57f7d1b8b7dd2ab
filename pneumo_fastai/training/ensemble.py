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
`NAME.valid.csv` beside it holds those pooled predictions.

The ensemble's OOD check (when its members have one) scores an image by `combined_score`: the
mean over members of each one's Mahalanobis score divided by that member's own threshold, since
each member's scores have their own distribution (its features, its training images, its
shrinkage). Its threshold is the (n+1) conformal quantile at 1 - alpha of held-out scores:
- seeds: of every shared-validation image's combined score; no member trained on those images,
  so this is exactly the score inference computes;
- folds: of each image's score under the one member that did not train on it, divided by that
  member's threshold. It is the only held-out score an image has (under the other members it is
  in-sample, so a mean over them would be biased low and the threshold would over-flag); each
  member's ratio on unseen images is calibrated on its own held-out fold, and the mean of the K
  ratios crosses a quantile of one ratio about as often when the members agree, and less often
  when they disagree (averaging narrows the tail).
The `ood_score` column of `NAME.valid.csv` holds those held-out scores.

A member whose export is complete and was trained with the same recipe is not retrained, so an
interrupted run picks up where it stopped; `members=[i]` re-runs member i alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..card import (
    DecisionThreshold,
    EnsembleCard,
    EnsembleData,
    EnsembleOod,
    EnsembleTraining,
    ExportPaths,
    Member,
    MemberTraining,
    ModelCard,
    Validation,
    read_card,
    verify_file,
)
from ..config import TrainConfig
from ..data.layout import class_counts, fingerprint
from ..errors import Interrupted, ModelFileError, PneumoError
from ..figures.metrics import binary_metrics, choose_threshold, nan_to_none
from ..fileio import sha256_file
from ..inference.ood_check import COMBINED, combined_score
from ..inference.ood_scores import conformal_quantile
from ..valid_csv import ValidTable, read_valid
from .export import card_header, record_onnx, threshold_rule, write_export, write_valid_csv
from .train import Log, train

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
        config.replace(
            exports=folder, name=f"{config.name}-seed{s}", seed=s, seeds=0, onnx=False,
            split_seed=config.splitting_seed,
        )
        for s in seeds
    ]  # fmt: skip


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


def check_member_files(card: ModelCard, card_path: Path, index: int) -> None:
    """Before a finished member is reused: each of its files against its card's sha256."""
    for kind in card.files:
        try:
            verify_file(card, card_path, kind)
        except ModelFileError as e:
            raise ModelFileError(
                f"Member {card.name} cannot be reused: {e} Retrain it with --member {index}."
            ) from e


def ood_scales(cards: Sequence[ModelCard]) -> list[float] | None:
    """The members' OOD thresholds, which `combined_score` divides by; None unless all have one."""
    if any(card.ood is None for card in cards):
        return None
    return [card.ood.threshold for card in cards]


def pooled_predictions(
    method: str,  # folds or seeds
    tables: Sequence[ValidTable],  # the members' validation predictions (`read_valid`)
    scales: Sequence[float] | None = None,  # `ood_scales`: also pool the OOD scores
) -> ValidTable:
    """The predictions the thresholds are chosen on (module docstring), ordered by file."""
    if scales is not None and any(t.ood_score is None for t in tables):
        raise PneumoError("A member's valid.csv has no ood_score column: retrain that member.")
    if method == "folds":
        files = [f for t in tables for f in t.files]
        if len(set(files)) != len(files):
            raise PneumoError("The folds' validation sets overlap: an image is out of fold twice.")
        held_out = None
        if scales is not None:
            held_out = np.concatenate(
                [combined_score([t.ood_score], [k]) for t, k in zip(tables, scales, strict=True)]
            )
        labels = [label for t in tables for label in t.labels]
        p = np.concatenate([t.probability for t in tables])
        return ValidTable(files, labels, p, held_out).sorted()
    first = tables[0]
    if any((t.files, t.labels) != (first.files, first.labels) for t in tables[1:]):
        raise PneumoError("The seed members were validated on different images.")
    mean = np.mean([t.probability for t in tables], axis=0)
    combined = None
    if scales is not None:
        combined = combined_score([t.ood_score for t in tables], scales)
    return ValidTable(first.files, first.labels, mean, combined)


def build_ensemble_card(
    config: TrainConfig, member_cards: Sequence[ModelCard], member_paths: Sequence[Path],
    card_path: Path, pooled: ValidTable,
) -> EnsembleCard:  # fmt: skip
    """The ensemble's card, its `files` empty until `write_ensemble` fills them."""
    method = "folds" if config.folds else "seeds"
    y, p = pooled.y, pooled.probability  # subtype labels: not NORMAL is PNEUMONIA
    threshold = choose_threshold(y, p, config.target_sensitivity)
    root = Path(member_cards[0].data.root)
    files = [root / f for f in pooled.files]
    return EnsembleCard(
        **card_header(config, member_cards[0].input),
        members=[
            Member(
                name=card.name,
                card=path.relative_to(card_path.parent).as_posix(),
                sha256=sha256_file(path),
                files=card.files,
            )
            for card, path in zip(member_cards, member_paths, strict=True)
        ],
        combine=COMBINE,
        data=EnsembleData(
            root=str(root),
            method=method,
            k=len(member_cards),
            n_valid=len(pooled.files),
            valid_counts=class_counts(files),
            valid_fingerprint=fingerprint(files, root),
        ),
        training=EnsembleTraining(
            seconds=round(sum(c.training.seconds for c in member_cards), 1),
            members=[
                MemberTraining(
                    name=c.name,
                    epochs_run=c.training.epochs_run,
                    best_epoch=c.training.best_epoch,
                    seconds=c.training.seconds,
                    temperature=c.temperature,
                )
                for c in member_cards
            ],
        ),
        validation=Validation(
            best_epoch={},
            argmax=nan_to_none(binary_metrics(y, p, 0.5)),
            at_threshold=nan_to_none(binary_metrics(y, p, threshold)),
        ),
        decision_threshold=DecisionThreshold(
            value=float(threshold),
            target_sensitivity=config.target_sensitivity,
            rule=threshold_rule(
                "the pooled out-of-fold predictions, applied to the members' mean"
                if method == "folds"
                else "the mean of the members' validation predictions"
            ),
        ),
        ood=ensemble_ood(member_cards, method, pooled),
        files={},
    )


def ensemble_ood(
    member_cards: Sequence[ModelCard], method: str, pooled: ValidTable
) -> EnsembleOod | None:
    """The ensemble's OOD record: a threshold on `combined_score` (see the module docstring)."""
    if ood_scales(member_cards) is None or pooled.ood_score is None:
        return None
    scores = pooled.ood_score
    first = member_cards[0].ood
    threshold = conformal_quantile(scores, first.alpha)
    held_out = (
        "the pooled out-of-fold scores (each image's score under the member that did not train "
        "on it, divided by that member's threshold)"
        if method == "folds"
        else "the members' combined scores of the images of their shared validation split"
    )
    return EnsembleOod(
        method=first.method,
        combine=COMBINED,
        features=first.features,
        alpha=first.alpha,
        threshold=threshold,
        threshold_rule=f"(n+1) conformal quantile at 1 - alpha of {held_out}; applied to the "
        "combined score",
        n_train=sum(c.ood.n_train for c in member_cards),
        n_train_members=[c.ood.n_train for c in member_cards],
        n_valid=len(scores),
        valid_flagged=float((scores > threshold).mean()),
    )


def write_ensemble(card_path: Path, card: EnsembleCard, pooled: ValidTable) -> EnsembleCard:
    """Write the pooled predictions and the ensemble card listing them, atomically."""
    paths = ExportPaths.for_name(card_path.parent, card_path.stem)
    return write_export(paths, card, {"valid": lambda tmp: write_valid_csv(tmp, pooled.rows())})


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
            check_member_files(done, ExportPaths.for_name(member.exports, member.name).card, i)
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
    tables = [read_valid(c, p) for c, p in zip(cards, paths, strict=True)]
    pooled = pooled_predictions("folds" if config.folds else "seeds", tables, ood_scales(cards))
    card = write_ensemble(
        card_path, build_ensemble_card(config, cards, paths, card_path, pooled), pooled
    )
    if config.onnx:
        card = record_onnx(card_path)
    v = card.validation.at_threshold
    log(
        f"Ensemble of {len(cards)} ({card.data.method}): pooled validation accuracy "
        f"{v['accuracy']:.3f}, sensitivity {v['sensitivity']:.3f}, specificity "
        f"{v['specificity']:.3f} at threshold {card.decision_threshold.value:.3f}, ROC AUC "
        f"{v['roc_auc']:.3f}. Wrote {card_path}."
    )
    return EnsembleResult(card_path, card, paths, trained)
