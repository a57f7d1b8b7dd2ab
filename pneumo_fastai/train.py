"""`train(config) -> TrainResult`: data, learner, one-cycle fit with early stopping, export.

from pneumo_fastai import TrainConfig, train
result = train(TrainConfig(data="../shared/data/chest_xray", epochs=3, pretrained=False))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
import numpy as np
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import CSVLogger, ProgressCallback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import Learner
from fastai.torch_core import set_seed

from .callbacks import GracefulStop, SaveBestModel, stop_on_signals
from .config import CLASSES, IMAGENET_MEAN, IMAGENET_STD, TrainConfig
from .data import (
    TRAIN_SPLITS,
    DatasetFiles,
    build_dataloaders,
    discover,
    fingerprint,
    label_of,
    limit_per_class,
    uses_cache,
)
from .dataset_check import check_dataset
from .distributed import distributed_run, is_main_process, process_device
from .errors import DataError, PneumoError
from .export import CARD_SCHEMA_VERSION, ExportPaths, library_versions, write_export
from .metrics import binary_metrics, choose_threshold
from .model import build_learner
from .sampling import BalancedSamplingCallback, class_weights, train_labels
from .weights import imagenet_state_dict

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    paths: ExportPaths  # the export files
    card: dict[str, Any]  # the model card as written
    learner: Learner  # the trained learner, best weights restored


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise PneumoError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PneumoError(
            f"Device {name!r} asked for, but no CUDA GPU is visible; use --device cpu."
        )
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """fp32, bf16 or fp16: `auto` means bf16 (fp16 on older GPUs) on CUDA and fp32 on CPU."""
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested != "fp32" and device.type != "cuda":
        raise PneumoError(
            f"--precision {requested} needs a CUDA GPU; use fp32 or auto on {device}."
        )
    return requested


def speed_callbacks(config: TrainConfig, device: torch.device) -> list[Callback]:
    """Mixed precision and channels-last callbacks as the config and device call for."""
    cbs: list[Callback] = []
    precision = resolve_precision(config.precision, device)
    if precision != "fp32":
        cbs.append(MixedPrecision(amp_mode=precision))
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    if channels_last:
        cbs.append(ChannelsLast())
    return cbs


_SEE_CHECK = " (`pneumo-fastai data check PATH` shows the full report.)"


def training_files(config: TrainConfig, log: Log) -> tuple[DatasetFiles, list[Path]]:
    """Discover, sanity-check and optionally subsample the training images."""
    if config.data is None:
        raise DataError("No dataset given: pass --data PATH or set PNEUMO_DATA.")
    report = check_dataset(
        config.data, quick=True, seed=config.seed, valid_pct=config.valid_pct, split=config.split
    )
    if report.problems:
        raise DataError(" ".join(report.problems) + _SEE_CHECK)
    bad = [
        i for i in report.issues if i.kind != "not_image" and i.path.split("/")[0] in TRAIN_SPLITS
    ]
    if bad:
        listed = "; ".join(f"{report.root / i.path} ({i.detail})" for i in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} image(s) cannot be read: {listed}{more}. Remove or replace them, "
            "then train again." + _SEE_CHECK
        )
    for warning in report.warnings:
        log(f"Note: {warning}")
    ds = discover(report.root)
    if ds.skipped:
        shown = ", ".join(p.name for p in ds.skipped[:5])
        log(f"Skipping {len(ds.skipped)} non-image file(s) in the class folders: {shown}")
    files = list(ds.files)
    if config.limit is not None:
        files = limit_per_class(files, config.limit, config.seed)
    return ds, files


def _class_counts(files: list[Path]) -> dict[str, int]:
    labels = [label_of(f) for f in files]
    return {c: labels.count(c) for c in CLASSES}


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def validation_figures(
    learn: Learner,
    target_sensitivity: float,
    cbs: Sequence[Callback] = (),  # e.g. the distributed trainer: every rank predicts its share
) -> dict[str, Any]:
    """Validation metrics at argmax and at the threshold chosen on the validation split."""
    probs, targs = learn.get_preds(ds_idx=1, cbs=list(cbs))
    y, p = targs.numpy().astype(int), probs[:, 1].numpy().astype(np.float64)
    threshold = choose_threshold(y, p, target_sensitivity)
    return {
        "threshold": float(threshold),
        "argmax": _finite(binary_metrics(y, p, 0.5)),
        "at_threshold": _finite(binary_metrics(y, p, threshold)),
        "probabilities": p.tolist(),
    }


def epoch_rows(learn: Learner) -> list[dict[str, float | None]]:
    """The recorder's per-epoch losses and metrics (read before any `get_preds` resets it)."""
    names = learn.recorder.metric_names[1:-1]
    return [_finite(dict(zip(names, map(float, v), strict=True))) for v in learn.recorder.values]


def build_card(
    config: TrainConfig,
    ds: DatasetFiles,
    learn: Learner,
    best: SaveBestModel,
    stopper: GracefulStop,
    balance: BalancedSamplingCallback | None,
    rows: list[dict[str, float | None]],
    figures: dict[str, Any],
    seconds: float,
    speed: list[Callback],
) -> dict[str, Any]:
    """The JSON model card (the `files` section is added when writing)."""
    train_files = list(learn.dls.train_ds.items)
    valid_files = list(learn.dls.valid_ds.items)
    epochs_run = len(rows)
    best_epoch = best.best_epoch
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(CLASSES),
        "positive_class": CLASSES[1],
        "input": {
            "size": config.size,
            "resize": "squash",
            "channels": 3,
            "source": "8-bit grayscale copied to 3 channels",
            "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        },
        "architecture": {
            "body": "resnet34",
            "head": f"AdaptiveAvgPool -> Dropout({config.dropout_in}) -> "
            f"Linear(512,{config.hidden}) -> ReLU -> Dropout({config.dropout_hidden}) -> "
            f"Linear({config.hidden},2)",
            "param_groups": ["stem..layer3", "layer4", "head"],
            "frozen": "stem..layer3 (BatchNorm trains)" if config.pretrained else "nothing",
        },
        "config": config.to_dict(),
        "data": {
            "root": str(ds.root.resolve()),
            "split_mode": config.split,
            "seed": config.seed,
            "valid_pct": config.valid_pct,
            "n_train": len(train_files),
            "n_valid": len(valid_files),
            "train_counts": _class_counts(train_files),
            "valid_counts": _class_counts(valid_files),
            "train_fingerprint": fingerprint(train_files, ds.root),
            "valid_fingerprint": fingerprint(valid_files, ds.root),
            "skipped_files": len(ds.skipped),
        },
        "training": {
            "device": str(learn.dls.device),
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "stopped_early": stopper.stopped_at_epoch is None and epochs_run < config.epochs,
            "interrupted": stopper.stopped_at_epoch is not None,
            "interrupted_at_epoch": stopper.stopped_at_epoch,
            "balanced_first_epoch_fractions": balance.first_epoch_fractions if balance else None,
            "seconds": round(seconds, 1),
            "seconds_per_epoch": round(seconds / max(epochs_run, 1), 1),
            "precision": next(
                (str(c.amp_mode) for c in speed if isinstance(c, MixedPrecision)), "fp32"
            ),
            "channels_last": any(isinstance(c, ChannelsLast) for c in speed),
            "cached_in_ram": uses_cache(learn.dls),
            "num_workers": learn.dls.train.fake_l.num_workers,
        },
        "validation": {
            "best_epoch": rows[best_epoch],
            "argmax": figures["argmax"],
            "at_threshold": figures["at_threshold"],
        },
        "decision_threshold": {
            "value": figures["threshold"],
            "target_sensitivity": config.target_sensitivity,
            "rule": "highest specificity with PNEUMONIA sensitivity >= target, on validation",
        },
        "versions": library_versions(),
    }


def _summary(card: dict[str, Any]) -> str:
    v, t = card["validation"]["at_threshold"], card["decision_threshold"]["value"]
    auc = v.get("roc_auc")
    return (
        f"best epoch {card['training']['best_epoch']} of {card['training']['epochs_run']}: "
        f"valid accuracy {v['accuracy']:.3f}, sensitivity {v['sensitivity']:.3f}, "
        f"specificity {v['specificity']:.3f} at threshold {t:.3f}"
        + (f", ROC AUC {auc:.3f}" if auc is not None else "")
    )


def train(
    config: TrainConfig,
    *,
    progress: bool = True,  # fastai's progress bars and epoch table
    log: Log = print,  # where one-line status messages go
    cbs: Sequence[Callback] = (),  # extra callbacks for this fit (loggers, custom stops)
) -> TrainResult:
    """Train, restore the best epoch, choose the threshold on validation, and export.

    Under `torchrun`/`accelerate launch` every process calls this with the same config: the data
    is checked on each before they join up, they train as one DDP model, and rank 0 logs and
    exports; every rank returns the same card.
    """
    set_seed(config.seed, reproducible=True)
    if not is_main_process():
        log = _silent
    ds, files = training_files(config, log)
    device = process_device(resolve_device(config.device))
    imagenet = imagenet_state_dict(config.weights) if config.pretrained else None
    dls = build_dataloaders(files, config, device=device, progress=progress and is_main_process())
    speed = speed_callbacks(config, device)
    loss_weight = class_weights(train_labels(dls), dls.c) if config.class_weighted_loss else None
    learn = build_learner(dls, config, imagenet, loss_weight)
    if not progress or not is_main_process():
        learn.remove_cb(ProgressCallback)
    log(
        f"Training on {len(dls.train_ds)} images, validating on {len(dls.valid_ds)} "
        f"({config.split} split, seed {config.seed}) on {device}."
    )

    with distributed_run(config.exports, device, config.sync_bn) as run:
        work = run.work
        learn.path, learn.model_dir = work, "."
        best = SaveBestModel(monitor="valid_loss", fname="best")
        stopper = GracefulStop()
        balance = BalancedSamplingCallback(seed=config.seed) if config.balanced else None
        cbs = [
            EarlyStoppingCallback(monitor="valid_loss", patience=config.patience),
            best,
            *([CSVLogger(fname=work / "history.csv")] if run.is_main else []),
            stopper,
            *([balance] if balance else []),
            *speed,
            *run.callbacks,
            *cbs,
        ]
        lr = slice(config.lr / 10, config.lr) if config.pretrained else config.lr
        start = time.perf_counter()
        with stop_on_signals(stopper):
            learn.fit_one_cycle(config.epochs, lr_max=lr, cbs=cbs)
        seconds = time.perf_counter() - start
        learn.model.to(memory_format=torch.contiguous_format)
        if best.best_epoch is None:
            raise PneumoError("Training stopped before the first epoch finished; nothing exported.")

        paths = ExportPaths.for_name(config.exports, config.name)
        learn.path, learn.model_dir = Path("."), "models"
        learn.logger = print  # CSVLogger restores whatever logger a caller's callback set

        rows = epoch_rows(learn)
        figures = validation_figures(learn, config.target_sensitivity, run.callbacks)
        card: dict[str, Any] | None = None
        if run.is_main:
            card = build_card(
                config, ds, learn, best, stopper, balance, rows, figures, seconds, speed
            )
            card["training"]["distributed"] = run.summary(config.bs)
            card = write_export(
                paths,
                card,
                write_pkl=lambda p: learn.export(p),
                write_weights=lambda p: torch.save(learn.model.state_dict(), p),
                history_src=work / "history.csv",
                valid_rows=_valid_rows(learn, ds, figures["probabilities"]),
            )
        card = run.share(card)
    log(_summary(card))
    log(f"Exported {paths.pkl}, {paths.weights} and {paths.card}.")
    return TrainResult(paths=paths, card=card, learner=learn)


def _silent(_: str) -> None:
    """`log` on ranks other than 0: only rank 0 reports."""


def _valid_rows(
    learn: Learner, ds: DatasetFiles, probs: list[float]
) -> list[tuple[str, str, float]]:
    return [
        (Path(f).relative_to(ds.root).as_posix(), label_of(f), p)
        for f, p in zip(learn.dls.valid_ds.items, probs, strict=True)
    ]
