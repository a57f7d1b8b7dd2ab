"""The network's pooled layer4 features, what the OOD check measures.

    layers = pooled_layers(model)           # one per network (per ensemble member)
    with capture(layers, kept): model(x)    # kept[i]: the (n, 512) outputs of layer i

The head is AdaptiveAvgPool2d -> Flatten -> Dropout -> Linear ...: the Flatten's output is the
512-d average of layer4.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from fastai.callback.hook import Hooks
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
    kept = dict(zip(layers, into, strict=True))

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kept[module].append(output.float())

    with Hooks(layers, keep, detach=True, cpu=True):  # fastai detaches and moves to the CPU
        yield
