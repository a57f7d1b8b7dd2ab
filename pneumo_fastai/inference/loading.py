"""Load an export for inference: weights + model card by default, the fastai pickle on request.

The default path never unpickles code: it rebuilds the network from the card, loads the
weights-only file (`torch.load(weights_only=True)`) and rebuilds the validation pipeline from
the card's config. `trust_pickle=True` uses fastai's `load_learner`. Both check the file's
sha256 against the card first, and both give the same probabilities. Inference runs under
`torch.inference_mode` with the device rule of `device.py` (`precision="fp32"` for parity checks).

    from pneumo_fastai.inference.loading import load_export
    exported = load_export("exports/pneumo_resnet34.json")
    dl = exported.dataloader(paths)
    p_pneumonia = exported.probabilities(dl)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastai.callback.progress  # noqa: F401 - adds Learner.no_bar
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from PIL import Image

from ..card import ModelCard, card_path_of, read_card, verify_file
from ..config import CLASSES, TrainConfig
from ..data.block import batch_transforms, item_transforms, xray_block
from ..data.names import label_of
from ..device import ComputePlan, autocast, resolve_compute, resolve_device
from ..errors import ModelFileError
from ..fileio import worker_count
from ..model import build_model


def _all_in_both(items: Sequence[Any]) -> tuple[list[int], list[int]]:
    everything = list(range(len(items)))
    return everything, everything  # fastai sets transforms up on a non-empty train split


def inference_datablock(config: TrainConfig, labelled: bool) -> DataBlock:
    """Files -> (image[, label]) with training's transforms (augmentation runs only in `tta`)."""
    blocks = (xray_block(draft=config.size),)
    if labelled:
        blocks = (*blocks, CategoryBlock(vocab=list(CLASSES)))
    return DataBlock(
        blocks=blocks,
        get_y=label_of if labelled else None,
        splitter=_all_in_both,
        item_tfms=item_transforms(config),
        batch_tfms=batch_transforms(config),
        n_inp=1,
    )


class AutocastPredictions(Callback):
    """Autocast the forward pass to the plan's precision; predictions come back as fp32."""

    order = 10

    def __init__(self, device: torch.device, precision: str):
        self.device, self.precision = device, precision

    def before_batch(self) -> None:
        self.context = autocast(self.device, self.precision)
        self.context.__enter__()

    def after_pred(self) -> None:
        self.context.__exit__(None, None, None)
        self.learn.pred = self.pred.float()


@dataclass
class ExportedModel:
    """An exported model ready for inference, whichever way it was loaded."""

    card: ModelCard  # the validated model card
    card_path: Path  # where the card lives (the other files sit beside it)
    config: TrainConfig  # training config recorded in the card
    learner: Learner  # fastai Learner around the network (pickled or rebuilt)
    device: torch.device  # where inference runs
    plan: ComputePlan  # precision and memory format of inference
    pickled_dls: DataLoaders | None  # the pickle's own (empty) loaders; None on the safe path

    @property
    def from_pickle(self) -> bool:
        """True when loaded with fastai's `load_learner`."""
        return self.pickled_dls is not None

    @property
    def threshold(self) -> float:
        """Decision threshold on P(PNEUMONIA) chosen on the validation split at training time."""
        return self.card.decision_threshold.value

    def dataloader(
        self,
        items: Sequence[Path | str | Image.Image],  # files, or images already decoded
        labelled: bool = False,  # labels from the parent folder (NORMAL/PNEUMONIA) of each file
        bs: int = 64,
        num_workers: int | None = None,
    ) -> TfmdDL:
        """A sequential loader over `items` with the export's own transforms."""
        workers = worker_count(beside_compute=True) if num_workers is None else num_workers
        items = [x if isinstance(x, Image.Image) else Path(x) for x in items]
        if self.pickled_dls is not None:
            return self.pickled_dls.test_dl(
                items,
                rm_type_tfms=0,  # keep LoadXray: it opens files and passes decoded images on
                with_labels=labelled,
                bs=bs,
                num_workers=workers,
                device=self.device,
            )
        dls = inference_datablock(self.config, labelled).dataloaders(
            items, bs=bs, num_workers=workers, device=self.device
        )
        return dls.valid

    def learner_for(self, dl: TfmdDL) -> Learner:
        """The Learner with `dl` as its loaders (for `tta` and `ClassificationInterpretation`)."""
        self.learner.dls = DataLoaders(dl, dl, device=self.device)
        return self.learner

    def probabilities(self, dl: TfmdDL, tta: bool = False) -> np.ndarray:
        """P(PNEUMONIA) for every item of `dl`, in order."""
        learn = self.learner_for(dl)
        fp32 = self.plan.precision == "fp32"
        cbs = [] if fp32 else [AutocastPredictions(self.device, self.plan.precision)]
        with (
            warnings.catch_warnings(),
            torch.inference_mode(),
            learn.added_cbs(cbs),
        ):
            warnings.simplefilter("ignore", UserWarning)
            probs, _ = learn.tta(dl=dl) if tta else learn.get_preds(dl=dl)
        return probs[:, 1].float().numpy().astype(np.float64)


def load_export(
    path: Path | str,  # export: NAME.json, NAME.pth, NAME.pkl, or a folder holding one card
    trust_pickle: bool = False,  # load the fastai pickle (runs its code) instead of the weights
    device: str = "auto",  # auto, cpu, cuda or cuda:N
    precision: str = "auto",  # auto (the device rule), fp32 or bf16
) -> ExportedModel:
    """Load export `path` after checking the sha256 in its card, ready for inference."""
    card_path = card_path_of(path)
    card = read_card(card_path)
    config = card.train_config()
    dev = resolve_device(device)
    plan = resolve_compute(dev, precision, training=False)
    if trust_pickle:
        pkl = verify_file(card, card_path, "pkl")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            learn = load_learner(pkl, cpu=dev.type == "cpu")
        learn.model.to(dev)
    else:
        weights = verify_file(card, card_path, "weights")
        model = build_model(config, n_out=len(card.classes))
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except RuntimeError as e:
            raise ModelFileError(
                f"{weights} does not fit the architecture in its card ({e})."
            ) from e
        model.to(dev)
        empty = DataLoaders(device=dev)
        learn = Learner(empty, model, loss_func=CrossEntropyLossFlat())
    learn.model.eval()
    if plan.channels_last:
        learn.model.to(memory_format=torch.channels_last)
    pickled_dls = learn.dls if trust_pickle else None
    return ExportedModel(card, card_path, config, learn, dev, plan, pickled_dls)
