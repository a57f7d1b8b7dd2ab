"""A tiny three-class export for the in-process tests of the web demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import make_dataset, one_torch_thread


@pytest.fixture(scope="session")
def subtype_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Card of a NORMAL / BACTERIA / VIRUS export: from scratch, 1 epoch, 64 px, synthetic."""
    from pneumo_fastai.config import TrainConfig
    from pneumo_fastai.training.train import train

    base = tmp_path_factory.mktemp("serve_subtype")
    config = TrainConfig(
        data=make_dataset(base / "chest_xray"), task="subtype", pretrained=False, epochs=1,
        size=64, bs=8, num_workers=0, seed=3, exports=base / "exports", name="sub64",
    )  # fmt: skip
    with one_torch_thread():
        return train(config, progress=False, log=lambda _: None).paths.card
