"""The card is fitted on fp32 outputs, whatever precision the fit ran in (training/reference.py)."""

import csv

import numpy as np
import pytest
import torch

from pneumo_fastai.card import read_card
from pneumo_fastai.training.reference import OOD_TRAIN_SAMPLE, ood_sample

from ..helpers.system import one_torch_thread


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_valid_csv_is_what_every_fp32_engine_gives(trained, tiny_config, precision):
    """A bf16 fit (forced, on any CPU) records the same fp32 outputs load_learner computes."""
    from fastai.learner import load_learner

    run = trained(tiny_config.replace(precision=precision))
    card = read_card(run.card)
    assert card.training.precision == precision
    with open(run.card.with_suffix(".valid.csv")) as f:
        rows = list(csv.DictReader(f))
    recorded = torch.tensor([float(r["probability"]) for r in rows])
    files = [run.config.data / r["file"] for r in rows]
    with one_torch_thread():
        learn = load_learner(run.card.with_suffix(".pkl"))
        probs, _ = learn.get_preds(dl=learn.dls.test_dl(files, num_workers=0))
    assert torch.allclose(probs[:, 1:].sum(dim=1), recorded, atol=1e-5)


def test_the_ood_sample_is_seeded_sorted_and_capped():
    assert ood_sample(10, seed=0) == list(range(10))
    picked = ood_sample(5000, seed=3)
    assert len(picked) == OOD_TRAIN_SAMPLE == len(set(picked)) and picked == sorted(picked)
    assert picked == ood_sample(5000, seed=3) and picked != ood_sample(5000, seed=4)
    assert np.max(picked) < 5000
