"""Load an export for inference: weights + model card by default, the fastai pickle on request.

The default path never unpickles anything: it rebuilds the network from the card, loads the
weights-only NAME.safetensors (NAME.pth, with `torch.load(weights_only=True)`, in exports of
0.1.0) and rebuilds the validation pipeline from the card's config. `trust_pickle=True` uses
fastai's `load_learner`. Both check the file's sha256 against the card first, and both give the
same probabilities. An ensemble's card loads every member the same way (`EnsembleModule`).
Inference runs under `torch.inference_mode` with the device rule of `device.py`
(`precision="fp32"` for parity checks). A prediction sets the Learner's loaders and callbacks
for its pass, so every use of the one Learner holds `ExportedModel.lock`: threads (`serve` at
any `--concurrency`) take turns on the network.

    from pneumo_fastai.inference.loading import load_export
    exported = load_export("exports/pneumo_resnet34.json")
    dl = exported.dataloader(paths)
    p_pneumonia = exported.probabilities(dl)
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastai.callback.progress  # noqa: F401 - adds Learner.no_bar
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.learner import Learner, load_learner
from PIL import Image
from safetensors.torch import load_file

from ..card import Card, EnsembleCard, ModelCard, card_path_of, read_card, verify_file
from ..config import TrainConfig
from ..data.augment import batch_transforms
from ..data.block import xray_block
from ..data.names import label_fn
from ..data.preprocess import preprocessing
from ..device import ComputePlan, autocast, resolve_compute, resolve_device
from ..errors import ModelFileError
from ..fileio import worker_count
from ..model import EnsembleModule, build_loss, build_model
from .features import capture, pooled_layers
from .members import member_cards


def _all_in_both(items: Sequence[Any]) -> tuple[list[int], list[int]]:
    everything = list(range(len(items)))
    return everything, everything  # fastai sets transforms up on a non-empty train split


def inference_datablock(config: TrainConfig, labelled: bool) -> DataBlock:
    """Files -> (image[, label]) with training's transforms (augmentation runs only in `tta`)."""
    blocks = (xray_block(preprocessing(config)),)
    if labelled:
        blocks = (*blocks, CategoryBlock(vocab=list(config.classes), sort=False))
    return DataBlock(
        blocks=blocks,
        get_y=label_fn(config.task) if labelled else None,
        splitter=_all_in_both,
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

    card: Card  # the validated model card (a single model's or an ensemble's)
    card_path: Path  # where the card lives (the other files sit beside it)
    config: TrainConfig  # training config recorded in the card
    learner: Learner  # fastai Learner around the network (pickled or rebuilt)
    device: torch.device  # where inference runs
    plan: ComputePlan  # precision and memory format of inference
    pickled_dls: DataLoaders | None  # the pickle's own (empty) loaders; None on the safe path
    # held while the Learner is set up for and runs one pass (reentrant: callers may hold it
    # around several passes, or a pass and the hooks that watch it)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

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
        labelled: bool = False,  # labels from each file's folder (or name, for subtype models)
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
        """The Learner with `dl` as its loaders (for `tta` and `ClassificationInterpretation`).

        It changes the shared Learner: hold `lock` while using what it returns, in threads.
        """
        self.learner.dls = DataLoaders(dl, dl, device=self.device)
        return self.learner

    def outputs(
        self,
        dl: TfmdDL,
        tta: bool = False,  # fastai's test-time augmentation (the features are the plain pass's)
        features: bool = False,  # also the pooled features, one array per network
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Class probabilities (n, n_classes), calibrated, for every item of `dl`, in order."""
        with self.lock:
            return self._outputs(dl, tta, features)

    def _outputs(
        self, dl: TfmdDL, tta: bool, features: bool
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        learn = self.learner_for(dl)
        fp32 = self.plan.precision == "fp32"
        cbs = [] if fp32 else [AutocastPredictions(self.device, self.plan.precision)]
        layers = pooled_layers(learn.model) if features else []
        kept: list[list[torch.Tensor]] = [[] for _ in layers]
        with (
            warnings.catch_warnings(),
            torch.inference_mode(),
            learn.added_cbs(cbs),
        ):
            warnings.simplefilter("ignore", UserWarning)
            if features or not tta:
                with capture(layers, kept):
                    probs, _ = learn.get_preds(dl=dl)
            if tta:
                probs, _ = learn.tta(dl=dl)
        feats = [torch.cat(k).numpy() for k in kept] if features else None
        return probs.float().numpy().astype(np.float64), feats

    def probabilities(self, dl: TfmdDL, tta: bool = False) -> np.ndarray:
        """P(PNEUMONIA) (every class but the first) for every item of `dl`, in order."""
        return positive_probability(self.outputs(dl, tta)[0])


def positive_probability(probs: np.ndarray) -> np.ndarray:
    """P(PNEUMONIA) from class probabilities: all but the first (NORMAL) class."""
    return probs[:, 1:].sum(axis=1)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file (no pickle) or, for exports of 0.1.0, a .pth."""
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_single(
    card: ModelCard, card_path: Path, trust_pickle: bool, dev: torch.device
) -> Learner:
    """One network's Learner, from its pickle or rebuilt from its weights (sha256 checked)."""
    config = card.train_config()
    if trust_pickle:
        pkl = verify_file(card, card_path, "pkl")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            learn = load_learner(pkl, cpu=dev.type == "cpu")
        learn.model.to(dev)
        return learn
    weights = verify_file(card, card_path, "weights")
    model = build_model(config, n_out=len(card.classes))
    try:
        model.load_state_dict(read_weights(weights))
    except RuntimeError as e:
        raise ModelFileError(f"{weights} does not fit the architecture in its card ({e}).") from e
    empty = DataLoaders(device=dev)
    return Learner(empty, model.to(dev), loss_func=build_loss(config, temperature=card.temperature))


def _load_ensemble(
    card: EnsembleCard, card_path: Path, trust_pickle: bool, dev: torch.device
) -> tuple[Learner, DataLoaders | None]:
    """A Learner around the members' `EnsembleModule`, and the first member's pickled loaders."""
    learners, temperatures = [], []
    for member_card, path in member_cards(card, card_path):
        learners.append(_load_single(member_card, path, trust_pickle, dev))
        temperatures.append(member_card.temperature)
    model = EnsembleModule([learn.model for learn in learners], temperatures).to(dev)
    config = card.train_config()
    dls = learners[0].dls if trust_pickle else DataLoaders(device=dev)
    return Learner(dls, model, loss_func=build_loss(config)), dls if trust_pickle else None


def load_export(
    path: Path | str,  # export: NAME.json, NAME.safetensors, NAME.pkl (0.1.0: NAME.pth), its folder
    trust_pickle: bool = False,  # load the fastai pickles (run their code) instead of the weights
    device: str = "auto",  # auto, cpu, cuda or cuda:N
    precision: str = "auto",  # auto (the device rule), fp32 or bf16
) -> ExportedModel:
    """Load export `path` (a single model or an ensemble) after checking every file's sha256."""
    card_path = card_path_of(path)
    card = read_card(card_path)
    dev = resolve_device(device)
    plan = resolve_compute(dev, precision, training=False)
    if isinstance(card, EnsembleCard):
        learn, pickled_dls = _load_ensemble(card, card_path, trust_pickle, dev)
    else:
        learn = _load_single(card, card_path, trust_pickle, dev)
        pickled_dls = learn.dls if trust_pickle else None
    learn.model.eval()
    if plan.channels_last:
        learn.model.to(memory_format=torch.channels_last)
    return ExportedModel(card, card_path, card.train_config(), learn, dev, plan, pickled_dls)
