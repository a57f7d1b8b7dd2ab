"""The best epoch's validation outputs, kept during the fit by `BestEpochPredictions`."""

import pytest
import torch

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.block import build_dataloaders
from pneumo_fastai.data.layout import discover
from pneumo_fastai.inference.features import pooled_layers
from pneumo_fastai.model import build_learner
from pneumo_fastai.training.callbacks import BestEpochPredictions, SaveBestModel

from ..helpers.system import one_torch_thread


@pytest.mark.slow
def test_the_kept_features_are_the_ones_the_kept_logits_came_from(dataset, tmp_path):
    config = TrainConfig(data=dataset, size=32, bs=8, num_workers=0, pretrained=False)
    dls = build_dataloaders(discover(dataset).files, config, device="cpu")
    learn = build_learner(dls, config)
    learn.path, learn.model_dir = tmp_path, "."
    pooled = pooled_layers(learn.model)[0]
    best = SaveBestModel(monitor="valid_loss", fname="best")
    kept = BestEpochPredictions(best, pooled)
    with one_torch_thread(), learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-3, cbs=[best, kept])
    n_valid = len(dls.valid_ds)
    assert kept.logits.shape == (n_valid, 2) and kept.features.shape == (n_valid, 512)
    assert kept.targs.tolist() == torch.cat([y for _, y in dls.valid]).tolist()
    head = learn.model[1].eval()
    with torch.no_grad():  # the layers after the pooled features, without dropout
        torch.testing.assert_close(head[2:](kept.features), kept.logits)
    assert not pooled._forward_hooks, "the hook lives only while validating"
