"""Class-balanced sampling: a callback that swaps the train loader for fastai's `WeightedDL`.

Only the train loader is replaced, only for the length of `fit`; valid and test loaders stay
sequential. Draws are made with replacement from a seeded generator, so one seed gives the
same batches on every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from fastai.callback.core import Callback
from fastai.callback.data import WeightedDL


def inverse_frequency_weights(labels: Sequence[int]) -> np.ndarray:
    """Per-sample weights 1/count(class), so each class carries the same total weight."""
    labels = np.asarray(labels)
    counts = Counter(labels.tolist())
    return np.array([1.0 / counts[y] for y in labels.tolist()], dtype=np.float64)


def class_weights(labels: Sequence[int], n_classes: int) -> np.ndarray:
    """Loss weights n/(k * count(class)): 1.0 for every class when they are balanced."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"every class needs at least one example, got counts {counts.tolist()}")
    return counts.sum() / (n_classes * counts)


class SeededWeightedDL(WeightedDL):
    """fastai's `WeightedDL` drawing from its own seeded generator; remembers its last draw."""

    def __init__(self, dataset=None, bs=None, wgts=None, seed: int = 0, **kwargs):
        super().__init__(dataset=dataset, bs=bs, wgts=wgts, **kwargs)
        self.seed = seed
        self.sampler_rng = np.random.default_rng(seed)
        self.last_idxs: list[int] = []

    def get_idxs(self) -> list[int]:
        if self.n == 0 or not self.shuffle:
            return super().get_idxs()
        self.last_idxs = self.sampler_rng.choice(self.n, self.n, replace=True, p=self.wgts).tolist()
        return self.last_idxs


def train_labels(dls) -> list[int]:
    """Encoded labels of the train dataset, read without opening any image."""
    return [int(y) for y in dls.train_ds.tls[1]]


class BalancedSamplingCallback(Callback):
    """Swap `dls.train` for a `SeededWeightedDL` with inverse-frequency weights during `fit`."""

    order = -20  # before TrainEvalCallback and the progress bar look at the loaders

    def __init__(self, seed: int = 0):  # seed of the sampler's generator
        self.seed = seed
        self.first_epoch_fractions: dict[str, float] = {}

    def before_fit(self) -> None:
        self.plain = self.dls.train
        self.labels = np.array(train_labels(self.dls))
        weighted = self.plain.new(
            cls=SeededWeightedDL, wgts=inverse_frequency_weights(self.labels), seed=self.seed
        )
        self.dls.loaders[0] = weighted
        self.first_epoch_fractions = {}

    def after_epoch(self) -> None:
        if self.first_epoch_fractions:
            return
        drawn = self.labels[self.dls.train.last_idxs]
        vocab = list(self.dls.vocab)
        self.first_epoch_fractions = {
            str(c): float((drawn == i).mean()) for i, c in enumerate(vocab)
        }

    def after_fit(self) -> None:
        self.dls.loaders[0] = self.plain
