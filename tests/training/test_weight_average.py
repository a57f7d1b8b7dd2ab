"""`WeightAverage`: validation, the kept epoch and the export use the average; training does not."""

import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.torch_core import set_seed
from torch import nn

from pneumo_fastai.training.callbacks import SaveBestModel
from pneumo_fastai.training.weight_average import WeightAverage

DECAY = 0.9


def flat(model: nn.Module) -> torch.Tensor:
    """Every parameter and buffer of `model`, in one vector."""
    tensors = [*model.parameters(), *model.buffers()]
    return torch.cat([t.detach().flatten().float() for t in tensors])


class Trajectory(Callback):
    """The weights after every step, those each validation runs on, and those steps start from."""

    order = WeightAverage.order + 1

    def before_fit(self) -> None:
        self.stepped, self.validated, self.started = [], [], []

    def after_step(self) -> None:
        self.stepped.append(flat(self.model))

    def before_batch(self) -> None:
        if self.training:
            self.started.append(flat(self.model))

    def after_validate(self) -> None:
        self.validated.append(flat(self.model))


def learner(tmp_path) -> Learner:
    set_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    items = list(zip(x, y, strict=True))
    dls = DataLoaders.from_dsets(items[:48], items[48:], bs=16, device="cpu")
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return Learner(dls, model, loss_func=nn.CrossEntropyLoss(), path=tmp_path, model_dir=".")


def debiased_ema(steps: list[torch.Tensor], decay: float) -> torch.Tensor:
    """sum_s decay**(t - s) * w_s / sum_s decay**(t - s) over the steps so far."""
    weights = torch.tensor([decay ** (len(steps) - 1 - s) for s in range(len(steps))])
    return (weights[:, None] * torch.stack(steps)).sum(0) / weights.sum()


@pytest.mark.slow
def test_validation_runs_on_the_average_and_training_on_the_trained_weights(tmp_path):
    learn = learner(tmp_path)
    seen = Trajectory()
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, 1e-2, cbs=[WeightAverage(DECAY), seen])
    per_epoch = len(learn.dls.train)
    for epoch, validated in enumerate(seen.validated):
        steps = seen.stepped[: (epoch + 1) * per_epoch]
        # BatchNorm's batch counter is copied, not averaged; the rest is the average
        torch.testing.assert_close(validated[:-1], debiased_ema(steps, DECAY)[:-1])
        assert not torch.allclose(validated, steps[-1]), "the average differs from the last step"
    # each epoch after the first starts from the trained weights, not from the average
    for epoch in (1, 2):
        first = epoch * per_epoch
        torch.testing.assert_close(seen.started[first], seen.stepped[first - 1])


@pytest.mark.slow
def test_the_kept_best_epoch_is_the_average_that_was_validated(tmp_path):
    learn = learner(tmp_path)
    seen = Trajectory()
    best = SaveBestModel(monitor="valid_loss", fname="best")
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, 1e-2, cbs=[WeightAverage(DECAY), best, seen])
    torch.testing.assert_close(flat(learn.model), seen.validated[best.best_epoch])
