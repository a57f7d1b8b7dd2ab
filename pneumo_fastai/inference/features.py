"""The network's pooled layer4 features (what the OOD check measures), beside its logits.

    feats, logits = features_and_logits(learn, dl)   # (n, 512) and (n, n_classes)

The head is AdaptiveAvgPool2d -> Flatten -> Dropout -> Linear ...: the Flatten's output is the
512-d average of layer4. For an `EnsembleModule`, `feats` is a list with one array per member.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import fastai.callback.progress  # noqa: F401 - adds Learner.no_bar
import numpy as np
import torch
from fastai.data.core import TfmdDL
from fastai.learner import Learner
from torch import nn

from ..model import EnsembleModule

POOLED = 1  # index of the Flatten (pooled features) in the head `model[1]`


def pooled_layers(model: nn.Module) -> list[nn.Module]:
    """The module whose output is the pooled features, for a network or each ensemble member."""
    members = model.members if isinstance(model, EnsembleModule) else [model]
    return [m[1][POOLED] for m in members]


@contextmanager
def capture(layers: list[nn.Module], into: list[list[torch.Tensor]]) -> Iterator[None]:
    """Append each layer's output (detached, fp32, on the CPU) to `into[i]` while active."""

    def keep(i: int):
        return lambda module, inputs, output: into[i].append(output.detach().float().cpu())

    hooks = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def features_and_logits(learn: Learner, dl: TfmdDL) -> tuple[list[np.ndarray], np.ndarray]:
    """Pooled features (one array per network) and raw model outputs for every item of `dl`."""
    layers = pooled_layers(learn.model)
    kept: list[list[torch.Tensor]] = [[] for _ in layers]
    with capture(layers, kept), learn.no_bar(), warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", UserWarning)
        logits, _ = learn.get_preds(dl=dl, act=lambda x: x)
    return [torch.cat(k).numpy() for k in kept], logits.float().numpy()
