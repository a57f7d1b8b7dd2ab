"""`train(config) -> TrainResult`: data, learner, one-cycle fit with early stopping, export.

from pneumo_fastai import TrainConfig, train
result = train(TrainConfig(data="../shared/data/chest_xray", epochs=3, pretrained=False))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fastai.callback.schedule  # noqa: F401 - adds Learner.fit_one_cycle
import numpy as np
import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp
from fastai.callback.progress import CSVLogger, ProgressCallback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import Learner
from fastai.torch_core import set_seed
from safetensors.torch import save_file

from ..card import (
    Calibration,
    DecisionThreshold,
    ExportPaths,
    ModelCard,
    TrainingFacts,
    Validation,
)
from ..config import TrainConfig
from ..data.block import build_dataloaders, uses_cache
from ..data.layout import TRAIN_SPLITS, DatasetFiles, relative_name
from ..data.names import label_fn
from ..data.select import Selection, dataset_folder
from ..datatools.check import check_dataset
from ..device import ComputePlan, resolve_compute, resolve_device
from ..errors import DataError, PneumoError
from ..figures.calibration import fit_temperature, nll, softmax
from ..figures.metrics import (
    binary_metrics,
    choose_threshold,
    expected_calibration_error,
    multiclass_metrics,
    nan_to_none,
)
from ..inference.features import pooled_layers
from ..model import build_learner
from ..progress import interactive
from ..weights import imagenet_state_dict
from .callbacks import (
    BestEpochPredictions,
    DeviceMixedPrecision,
    EpochLog,
    GracefulStop,
    PlainTensorInputs,
    ProgressiveResize,
    SaveBestModel,
    stop_on_signals,
)
from .export import (
    FinishedRun,
    ValidationFigures,
    build_card,
    record_onnx,
    threshold_rule,
    write_export,
    write_valid_csv,
)
from .mixstyle import MixStyle
from .ood_fit import fit_detector
from .optimizer import FusedAdam
from .ranks import is_main_process
from .reference import reference_outputs
from .run import DistributedRun, distributed_run, process_device
from .sampling import BalancedSamplingCallback, class_weights, train_labels
from .weight_average import WeightAverage

Log = Callable[[str], None]
CALIBRATION_METHOD = "temperature scaling: NLL of the validation logits, softmax(logits / T)"


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    paths: ExportPaths  # the export files
    card: ModelCard  # the model card as written
    learner: Learner  # the trained learner, best weights restored


def recipe_callbacks(config: TrainConfig) -> list[Callback]:
    """MixUp or CutMix, MixStyle, progressive resizing and weight averaging, as asked."""
    cbs: list[Callback] = []
    if config.mixup:
        cbs.append(MixUp(config.mixup))
    if config.cutmix:
        cbs.append(CutMix(config.cutmix))
    if config.mixstyle:
        cbs.append(MixStyle(config.mixstyle))
    if config.progressive:
        cbs.append(ProgressiveResize(config.progressive))
    if config.ema:
        cbs.append(WeightAverage(config.ema))
    return cbs


class Phases:
    """Wall seconds of the named steps of a run, in the order they ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 2)


def speed_callbacks(plan: ComputePlan) -> list[Callback]:
    """Plain tensors into the network, and mixed precision and channels-last for `plan`."""
    cbs: list[Callback] = [PlainTensorInputs()]
    if plan.precision != "fp32":
        cbs.append(DeviceMixedPrecision(amp_mode=plan.precision))
    if plan.channels_last:
        cbs.append(ChannelsLast())
    return cbs


_SEE_CHECK = " (`pneumo-fastai data check PATH` shows the full report.)"


def training_files(config: TrainConfig, log: Log) -> Selection:
    """Check the dataset folder, then select the images `config` trains on (`data.select`)."""
    report = check_dataset(dataset_folder(config), quick=True, config=config)
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
    selection = report.selection
    for note in selection.notes:
        log(note)
    return selection


def validation_figures(
    logits: torch.Tensor,  # (n, n_classes) validation logits of the best epoch
    targs: torch.Tensor,  # (n,) class indices; 0 is NORMAL
    target_sensitivity: float,
    best_epoch: dict[str, float | None],  # the best epoch's row of `epoch_rows`
) -> ValidationFigures:
    """Temperature scaling, then metrics at argmax and at the threshold chosen on validation.

    The temperature is fitted on these validation logits; the threshold is chosen on the
    calibrated P(PNEUMONIA) (every class but NORMAL), which is also what the export predicts.
    With more than two classes, `subtype` holds the figures of the classes themselves.
    """
    labels, z = targs.numpy().astype(int), logits.numpy().astype(np.float64)
    temperature = fit_temperature(z, labels)
    probs = softmax(z, temperature)
    y = (labels != 0).astype(int)
    raw, p = 1 - softmax(z)[:, 0], 1 - probs[:, 0]
    threshold = choose_threshold(y, p, target_sensitivity)

    def quality(pos: np.ndarray, t: float) -> dict[str, float]:
        return {
            "nll": nll(z, labels, t),
            "ece": expected_calibration_error(y, pos),
            "brier": float(np.mean((pos - y) ** 2)),
        }

    return ValidationFigures(
        validation=Validation(
            best_epoch=best_epoch,
            argmax=nan_to_none(binary_metrics(y, p, 0.5)),
            at_threshold=nan_to_none(binary_metrics(y, p, threshold)),
            subtype=None if z.shape[1] == 2 else nan_to_none(multiclass_metrics(labels, probs)),
        ),
        calibration=Calibration(
            temperature=temperature,
            method=CALIBRATION_METHOD,
            n=len(y),
            before=quality(raw, 1.0),
            after=quality(p, temperature),
        ),
        decision_threshold=DecisionThreshold(
            value=float(threshold), target_sensitivity=target_sensitivity, rule=threshold_rule()
        ),
        probabilities=p.tolist(),
    )


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


@dataclass(frozen=True)
class Built:
    """What setup made: the data, the device and the learner, ready to fit."""

    ds: DatasetFiles  # the dataset folder as discovered
    device: torch.device  # this process's device
    learn: Learner  # loaders, network, loss and metrics


def _build(config: TrainConfig, files: Sequence[Path], ds: DatasetFiles, progress: bool) -> Built:
    """Weights, loaders (and the cache fill) and the learner."""
    device = process_device(resolve_device(config.device))
    imagenet = imagenet_state_dict(config.weights) if config.pretrained else None
    dls = build_dataloaders(files, config, device=device, progress=progress)
    weighted = config.class_weighted_loss
    loss_weight = class_weights(train_labels(dls), dls.c) if weighted else None
    learn = build_learner(dls, config, imagenet, loss_weight, opt_func=FusedAdam)
    if not (progress and interactive()):
        learn.remove_cb(ProgressCallback)  # `EpochLog` writes the epoch table instead
    return Built(ds, device, learn)


def _fit(
    config: TrainConfig,
    built: Built,
    run: DistributedRun,
    phases: Phases,
    log: Log,
    cbs: Sequence[Callback],
) -> FinishedRun:
    """One-cycle fit with early stopping, the best epoch restored, then the card's figures."""
    learn = built.learn
    with phases("probe"):  # rank 0 decides, so that every process computes alike
        main = (
            resolve_compute(built.device, config.precision, config.channels_last)
            if run.is_main
            else None
        )
        plan = run.share(main)
    log(
        f"Training on {len(learn.dls.train_ds)} images, validating on {len(learn.dls.valid_ds)} "
        f"({config.split} split, seed {config.splitting_seed}) on {built.device}, {plan.precision}"
        f"{', channels-last' if plan.channels_last else ''} ({plan.reason})."
    )
    learn.path, learn.model_dir = run.work, "."
    best = SaveBestModel(monitor="valid_loss", fname="best")
    kept = BestEpochPredictions(best, pooled_layers(learn.model)[0] if config.ood else None)
    stopper = GracefulStop()
    balance = BalancedSamplingCallback(seed=config.seed) if config.balanced else None
    fit_cbs = [
        EarlyStoppingCallback(monitor="valid_loss", patience=config.patience),
        best,
        kept,
        *([CSVLogger(fname=run.work / "history.csv")] if run.is_main else []),
        *([] if any(isinstance(cb, ProgressCallback) for cb in learn.cbs) else [EpochLog(log)]),
        stopper,
        *([balance] if balance else []),
        *recipe_callbacks(config),
        *speed_callbacks(plan),
        *run.callbacks,
        *cbs,
    ]
    lr = slice(config.lr / 10, config.lr) if config.pretrained else config.lr
    with phases("fit"), stop_on_signals(stopper):
        learn.fit_one_cycle(config.epochs, lr_max=lr, cbs=fit_cbs)
    learn.model.to(memory_format=torch.contiguous_format)
    if best.best_epoch is None:
        raise PneumoError("Training stopped before the first epoch finished; nothing exported.")
    learn.path, learn.model_dir = Path("."), "models"
    learn.logger = print  # CSVLogger restores whatever logger a caller's callback set
    rows = epoch_rows(learn)
    with phases("reference"):  # fp32 outputs for the card (see `reference.py`)
        outputs = reference_outputs(learn, kept, plan, config.ood, config.seed)
        figures = validation_figures(
            outputs.logits, outputs.targs, config.target_sensitivity, rows[best.best_epoch]
        )
        detector = None
        if config.ood:
            detector = fit_detector(
                outputs.train_features, outputs.train_labels, outputs.valid_features
            )
    learn.loss_func.temperature = figures.calibration.temperature  # in the pickle too
    epochs_run, fit = len(rows), phases.seconds["fit"]
    training = TrainingFacts(
        device=str(learn.dls.device),
        epochs_run=epochs_run,
        best_epoch=best.best_epoch,
        stopped_early=stopper.stopped_at_epoch is None and epochs_run < config.epochs,
        interrupted=stopper.stopped_at_epoch is not None,
        interrupted_at_epoch=stopper.stopped_at_epoch,
        balanced_first_epoch_fractions=balance.first_epoch_fractions if balance else None,
        seconds=round(fit, 1),
        seconds_per_epoch=round(fit / max(epochs_run, 1), 1),
        phases=phases.seconds,
        precision=plan.precision,
        channels_last=plan.channels_last,
        compute_rule=plan.reason,
        cached_in_ram=uses_cache(learn.dls),
        num_workers=learn.dls.train.fake_l.num_workers,
        distributed=run.summary(config.bs),
    )
    return FinishedRun(config, built.ds, learn, training, figures, detector, run.work)


def _export(done: FinishedRun) -> ModelCard:
    """Write the export's files and its card, atomically; the ONNX graph when asked."""
    config, learn = done.config, done.learn
    paths = ExportPaths.for_name(config.exports, config.name)
    fields = build_card(done)
    scores = [] if done.detector is None else [done.detector.valid_scores.tolist()]
    rows = _valid_rows(learn, done.ds, config.task, done.figures.probabilities, *scores)
    writers = {
        "pkl": learn.export,
        "weights": lambda p: save_file(learn.model.state_dict(), p),
        "history": lambda p: p.write_bytes((done.work / "history.csv").read_bytes()),
        "valid": lambda p: write_valid_csv(p, rows),
    }
    if done.detector is not None:
        writers["ood"] = done.detector.stats.save
    card = write_export(paths, fields, writers)
    return record_onnx(paths.card) if config.onnx else card


def train(
    config: TrainConfig,
    *,
    progress: bool = True,  # fastai's progress bars and epoch table
    log: Log = print,  # where one-line status messages go
    cbs: Sequence[Callback] = (),  # extra callbacks for this fit (loggers, custom stops)
) -> TrainResult:
    """Train, restore the best epoch, calibrate and choose the threshold on validation, export.

    Under `torchrun`/`accelerate launch` every process calls this with the same config: the data
    is checked on each before they join up, they train as one DDP model, and rank 0 logs and
    exports; every rank returns the same card. An interrupted run (first Ctrl-C or SIGTERM)
    still exports its best epoch, with `card.training.interrupted` set.
    """
    if config.seeds or (config.folds and config.fold is None):
        raise PneumoError(
            "This config describes an ensemble (--folds or --seeds): use "
            "pneumo_fastai.training.ensemble.train_ensemble, or `pneumo-fastai train`."
        )
    set_seed(config.seed, reproducible=True)
    main = is_main_process()
    log = log if main else _silent
    phases = Phases()
    with phases("check"):
        chosen = training_files(config, log)
    with phases("setup"):  # weights, loaders (and the cache fill), learner
        built = _build(config, chosen.files, chosen.dataset, progress and main)
    with distributed_run(config.exports, built.device, config.sync_bn) as run:
        done = _fit(config, built, run, phases, log, cbs)
        card = run.share(_export(done) if run.is_main else None)
    paths = ExportPaths.for_name(config.exports, config.name)
    log(_summary(card))
    log(f"Exported {paths.pkl}, {paths.weights} and {paths.card}.")
    return TrainResult(paths=paths, card=card, learner=done.learn)


def _silent(_: str) -> None:
    """`log` on ranks other than 0: only rank 0 reports."""


def _valid_rows(
    learn: Learner, ds: DatasetFiles, task: str, *columns: Sequence[float]
) -> list[tuple]:
    label = label_fn(task)
    return [
        (relative_name(f, ds.root), label(f), *values)
        for f, *values in zip(learn.dls.valid_ds.items, *columns, strict=True)
    ]
