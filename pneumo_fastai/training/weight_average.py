"""An exponential moving average of the weights, validated, kept and exported in their place.

Polyak averaging, as timm's `ModelEmaV2` does it: after every optimiser step each parameter and
buffer (BatchNorm's running statistics too) moves part of the way towards the trained network's.
Averaged weights sit in a flatter region of the loss than the last step's, which is what weight
averaging for domain generalisation builds on (SWA, Izmailov et al. 2018; SWAD, Cha et al.
2021). Every validation pass runs on the average, so early stopping, the best epoch that
`SaveBestModel` keeps and restores, the validation logits and the export all are the average's;
training continues from the network's own weights.
"""

from __future__ import annotations

import torch
from fastai.callback.core import Callback

from .callbacks import BestEpochPredictions


class WeightAverage(Callback):
    """Validate on (and so keep) an exponential moving average of the weights, bias-corrected.

    Step s of t weighs decay**(t - s), normalised over the steps so far (Adam's bias
    correction), so the initial random weights weigh nothing; 0.998 averages about the last 500
    steps.
    """

    order = BestEpochPredictions.order + 1  # puts the trained weights back after both have run

    def __init__(self, decay: float):  # share of the average kept at each step, in (0, 1)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay

    def _tensors(self) -> list[torch.Tensor]:
        return [*self.learn.model.parameters(), *self.learn.model.buffers()]

    def before_fit(self) -> None:
        self.steps = 0
        self.average = [t.detach().clone() for t in self._tensors()]
        self.trained: list[torch.Tensor] | None = None

    @torch.no_grad()
    def after_step(self) -> None:
        self.steps += 1
        weight = (1.0 - self.decay) / (1.0 - self.decay**self.steps)
        for avg, now in zip(self.average, self._tensors(), strict=True):
            if avg.is_floating_point():
                avg.lerp_(now.detach(), weight)
            else:  # BatchNorm's batch counters
                avg.copy_(now)

    @torch.no_grad()
    def before_validate(self) -> None:
        tensors = self._tensors()
        self.trained = [t.detach().clone() for t in tensors]
        for t, avg in zip(tensors, self.average, strict=True):
            t.copy_(avg)

    @torch.no_grad()
    def _restore(self) -> None:
        if self.trained is not None:
            for t, kept in zip(self._tensors(), self.trained, strict=True):
                t.copy_(kept)
            self.trained = None

    def after_epoch(self) -> None:
        self._restore()

    def after_cancel_fit(self) -> None:
        self._restore()
