"""`train(config) -> TrainResult`: data, learner, one-cycle fit with early stopping, export.

from pneumo_fastai import TrainConfig, train
result = train(TrainConfig(data="../shared/data/chest_xray", epochs=3, pretrained=False))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
import numpy as np
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger, ProgressCallback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import Learner
from fastai.torch_core import set_seed

from ..card import ExportPaths, ModelCard
from ..config import TrainConfig
from ..data.block import build_dataloaders
from ..data.layout import TRAIN_SPLITS, DatasetFiles, discover, relative_name
from ..data.names import label_of
from ..data.split import limit_per_class
from ..datatools.check import check_dataset
from ..device import ComputePlan, resolve_compute, resolve_device
from ..errors import DataError, PneumoError
from ..evaluation.metrics import binary_metrics, choose_threshold, nan_to_none
from ..model import build_learner
from ..weights import imagenet_state_dict
from .callbacks import DeviceMixedPrecision, GracefulStop, SaveBestModel, stop_on_signals
from .export import build_card, write_export
from .ranks import is_main_process
from .run import distributed_run, process_device
from .sampling import BalancedSamplingCallback, class_weights, train_labels

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    paths: ExportPaths  # the export files
    card: ModelCard  # the model card as written
    learner: Learner  # the trained learner, best weights restored


def speed_callbacks(plan: ComputePlan) -> list[Callback]:
    """Mixed precision and channels-last callbacks for `plan`."""
    cbs: list[Callback] = []
    if plan.precision != "fp32":
        cbs.append(DeviceMixedPrecision(amp_mode=plan.precision))
    if plan.channels_last:
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
        "argmax": nan_to_none(binary_metrics(y, p, 0.5)),
        "at_threshold": nan_to_none(binary_metrics(y, p, threshold)),
        "probabilities": p.tolist(),
    }


def epoch_rows(learn: Learner) -> list[dict[str, float | None]]:
    """The recorder's per-epoch losses and metrics (read before any `get_preds` resets it)."""
    names = learn.recorder.metric_names[1:-1]
    return [
        nan_to_none(dict(zip(names, map(float, v), strict=True))) for v in learn.recorder.values
    ]


def _summary(card: ModelCard) -> str:
    v, t = card.validation.at_threshold, card.decision_threshold.value
    auc = v.get("roc_auc")
    return (
        f"best epoch {card.training.best_epoch} of {card.training.epochs_run}: "
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
    exports; every rank returns the same card. An interrupted run (first Ctrl-C or SIGTERM)
    still exports its best epoch, with `card.training.interrupted` set.
    """
    set_seed(config.seed, reproducible=True)
    if not is_main_process():
        log = _silent
    ds, files = training_files(config, log)
    device = process_device(resolve_device(config.device))
    plan = resolve_compute(device, config.precision, config.channels_last, training=True)
    imagenet = imagenet_state_dict(config.weights) if config.pretrained else None
    dls = build_dataloaders(files, config, device=device, progress=progress and is_main_process())
    loss_weight = class_weights(train_labels(dls), dls.c) if config.class_weighted_loss else None
    learn = build_learner(dls, config, imagenet, loss_weight)
    log(
        f"Training on {len(dls.train_ds)} images, validating on {len(dls.valid_ds)} "
        f"({config.split} split, seed {config.seed}) on {device}, {plan.precision}"
        f"{', channels-last' if plan.channels_last else ''} ({plan.reason})."
    )

    if not progress or not is_main_process():
        learn.remove_cb(ProgressCallback)
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
            *speed_callbacks(plan),
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
        card: ModelCard | None = None
        if run.is_main:
            fields = build_card(
                config, ds, learn, best, stopper, balance, rows, figures, seconds, plan,
                run.summary(config.bs),
            )  # fmt: skip
            card = write_export(
                paths,
                fields,
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
        (relative_name(f, ds.root), label_of(f), p)
        for f, p in zip(learn.dls.valid_ds.items, probs, strict=True)
    ]
