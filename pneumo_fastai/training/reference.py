"""The outputs a card's figures are fitted on: fp32, the precision every engine can reproduce.

    outputs = reference_outputs(learn, kept, plan, ood=True, seed=42)
    feats, logits = features_and_logits(learn.model.eval(), dl)   # (n, 512), (n, n_classes)

Calibration (the temperature), the decision threshold, the validation figures, `NAME.valid.csv`
and the OOD statistics all come from the best epoch's network run in **fp32**: the torch engine
at `--precision fp32`, `load_learner`, the ONNX graph and a CPU without bf16 give exactly these
outputs. When the fit itself ran in fp32 its best epoch's validation pass already holds them;
after a bf16 or fp16 fit the validation split is predicted once more in fp32. The OOD check's
class means and covariance come from a pass over a seeded sample of the training split
(`OOD_TRAIN_SAMPLE` images: 512 features per image need a thousand, not all of them) at the
fit's own precision: Gaussian statistics of 1024 images do not move with bf16 rounding, and its
threshold is set on the fp32 validation scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from fastai.data.core import TfmdDL
from fastai.learner import Learner
from torch import nn

from ..device import ComputePlan, autocast
from ..inference.features import capture, pooled_layers
from .callbacks import BestEpochPredictions
from .sampling import train_labels

OOD_TRAIN_SAMPLE = 1024  # training images the OOD statistics are fitted on (seeded sample)


@dataclass(frozen=True)
class ReferenceOutputs:
    """The best epoch's fp32 outputs that the card is fitted on."""

    logits: torch.Tensor  # (n_valid, n_classes) validation logits
    targs: torch.Tensor  # (n_valid,) validation class indices
    valid_features: np.ndarray | None  # (n_valid, d) pooled features, when the OOD check is on
    train_features: np.ndarray | None  # (n_sample, d) of the training sample
    train_labels: np.ndarray | None  # (n_sample,) its class indices
    recomputed: bool  # whether validation was predicted again (the fit ran in bf16 or fp16)


def ood_sample(n: int, seed: int, k: int = OOD_TRAIN_SAMPLE) -> list[int]:
    """Sorted indices of a seeded sample of at most `k` of `n` training images."""
    if n <= k:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, k, replace=False).tolist())


def features_and_logits(
    model: nn.Module,  # in eval mode
    dl: TfmdDL,  # a sequential loader (valid or test)
    precision: str = "fp32",  # autocast the forward pass to bf16 or fp16
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (n, 512) and logits (n, n_classes) of every item of `dl`, in order.

    A plain loop rather than `get_preds`: under torchrun every process runs it alone, and
    fastai's `get_preds` would gather the processes' predictions into one another's.
    """
    kept: list[list[torch.Tensor]] = [[]]
    logits = []
    with capture(pooled_layers(model)[:1], kept), torch.inference_mode():
        for xb, *_ in dl:
            with autocast(xb.device, precision):
                logits.append(model(xb.as_subclass(torch.Tensor)).float().cpu())
    return torch.cat(kept[0]).numpy(), torch.cat(logits).numpy()


@contextmanager
def _memory_format(learn: Learner, channels_last: bool) -> Iterator[None]:
    """The network in channels-last while inside (faster on most CPUs, same fp32 values)."""
    if channels_last:
        learn.model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        learn.model.to(memory_format=torch.contiguous_format)


def reference_outputs(
    learn: Learner,  # the trained learner, best epoch restored, no autocast callback left
    kept: BestEpochPredictions,  # what the best epoch's validation pass kept
    plan: ComputePlan,  # how the fit ran
    ood: bool,  # whether the OOD check needs features
    seed: int,  # of the training sample
) -> ReferenceOutputs:
    """Validation logits (and features) in fp32, plus the OOD training sample's features."""
    recompute = plan.precision != "fp32"
    valid_features = None if kept.features is None else kept.features.numpy()
    logits, targs = kept.logits, kept.targs
    train_features = labels = None
    model = learn.model.eval()
    with _memory_format(learn, plan.channels_last):
        if recompute:
            feats, raw = features_and_logits(model, learn.dls.valid)
            logits, valid_features = torch.from_numpy(raw), feats if ood else None
        if ood:
            idxs = ood_sample(len(learn.dls.train_ds), seed)
            items = [learn.dls.train_ds.items[i] for i in idxs]
            dl = learn.dls.test_dl(items, num_workers=learn.dls.train.fake_l.num_workers)
            train_features = features_and_logits(model, dl, plan.precision)[0]
            labels = np.array(train_labels(learn.dls))[idxs]
    return ReferenceOutputs(logits, targs, valid_features, train_features, labels, recompute)
