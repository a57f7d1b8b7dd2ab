"""The fastai DataBlock: batches, validation pipeline, and what `LoadXray` accepts."""

import torch

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.block import build_dataloaders
from pneumo_fastai.data.layout import discover


def test_dataloaders_give_normalised_3_channel_batches_and_plain_validation(dataset):
    config = TrainConfig(data=dataset, size=32, bs=4, num_workers=0)
    dls = build_dataloaders(discover(dataset).files, config, device="cpu")
    assert list(dls.vocab) == ["NORMAL", "PNEUMONIA"]
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert -3 < x.mean() < 3 and set(y.tolist()) <= {0, 1}
    first = torch.cat([b[0] for b in dls.valid])
    second = torch.cat([b[0] for b in dls.valid])
    assert torch.equal(first, second), "validation must not be augmented or shuffled"
