from collections import Counter

import numpy as np
import pytest
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.block import build_dataloaders
from pneumo_fastai.data.layout import discover
from pneumo_fastai.model import build_learner
from pneumo_fastai.training.sampling import (
    BalancedSamplingCallback,
    SeededWeightedDL,
    class_weights,
    inverse_frequency_weights,
    train_labels,
)

from ..helpers.data import make_dataset
from ..helpers.system import one_torch_thread


def test_inverse_frequency_weights_give_each_class_the_same_mass():
    labels = [0] * 10 + [1] * 30
    w = inverse_frequency_weights(labels)
    assert w[:10].sum() == pytest.approx(w[10:].sum())
    assert w[0] == pytest.approx(1 / 10) and w[-1] == pytest.approx(1 / 30)


def test_class_weights_are_one_when_balanced_and_refuse_an_empty_class():
    assert class_weights([0, 1, 0, 1], 2).tolist() == [1.0, 1.0]
    assert class_weights([0] * 10 + [1] * 30, 2).tolist() == pytest.approx([2.0, 2 / 3])
    with pytest.raises(ValueError):
        class_weights([1, 1], 2)


@pytest.fixture
def dls(tmp_path):
    root = make_dataset(tmp_path / "d", n_normal=20, n_pneumonia=60)
    config = TrainConfig(data=root, size=32, bs=8, num_workers=0)
    return build_dataloaders(discover(root).files, config, device="cpu")


def _weighted(dls, seed):
    labels = np.array(train_labels(dls))
    return dls.train.new(
        cls=SeededWeightedDL, wgts=inverse_frequency_weights(labels), seed=seed
    ), labels


def test_weighted_loader_draws_about_half_of_each_class_with_replacement(dls):
    wdl, labels = _weighted(dls, seed=0)
    assert Counter(labels.tolist())[0] / len(labels) < 0.3  # the split itself is imbalanced
    drawn = [labels[wdl.get_idxs()] for _ in range(50)]
    frac = np.concatenate(drawn).mean()
    assert 0.45 < frac < 0.55
    assert len(wdl.last_idxs) == len(labels), "one epoch draws as many items as the train split"
    assert len(set(wdl.last_idxs)) < len(labels), "sampling is with replacement"


def test_weighted_loader_is_seeded(dls):
    a, _ = _weighted(dls, seed=1)
    b, _ = _weighted(dls, seed=1)
    c, _ = _weighted(dls, seed=2)
    first = [a.get_idxs() for _ in range(3)]
    assert first == [b.get_idxs() for _ in range(3)]
    assert first != [c.get_idxs() for _ in range(3)]


class _Spy(Callback):
    order = 0

    def before_epoch(self):
        self.train_type = type(self.dls.train)
        self.valid_dl = self.dls.valid


@pytest.mark.slow
def test_callback_swaps_only_the_train_loader_during_fit_and_restores_it(dls):
    learn = build_learner(dls, TrainConfig(size=32, bs=8))
    plain_train, plain_valid = dls.train, dls.valid
    balance, spy = BalancedSamplingCallback(seed=0), _Spy()
    learn.remove_cb(ProgressCallback)
    with one_torch_thread(), learn.no_logging():
        learn.fit(1, 1e-4, cbs=[balance, spy])
    assert spy.train_type is SeededWeightedDL
    assert spy.valid_dl is plain_valid and not plain_valid.shuffle
    assert dls.train is plain_train and type(dls.train) is not SeededWeightedDL
    assert set(balance.first_epoch_fractions) == {"NORMAL", "PNEUMONIA"}
    assert sum(balance.first_epoch_fractions.values()) == pytest.approx(1.0)
