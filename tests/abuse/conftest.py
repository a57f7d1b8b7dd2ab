"""A cheap export for the abuse suite: the schema-1 card with fresh random weights (no training)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..helpers.cards import old_export_with_fresh_weights
from ..helpers.system import one_torch_thread


@pytest.fixture(scope="session")
def fresh_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The schema-1 export, 32 px, random weights: read-only, copy it to change it."""
    return old_export_with_fresh_weights(tmp_path_factory.mktemp("fresh"))


@pytest.fixture
def export_copy(fresh_export: Path, tmp_path: Path) -> Path:
    """A copy of `fresh_export` in its own folder, for a test to tamper with."""
    folder = tmp_path / "export"
    shutil.copytree(fresh_export.parent, folder)
    return folder / fresh_export.name


@pytest.fixture(scope="module")
def classifier(fresh_export: Path):
    """`fresh_export` loaded for prediction on the CPU, one torch thread."""
    from pneumo_fastai.inference.predict import load_model

    with one_torch_thread():
        yield load_model(fresh_export, device="cpu", precision="fp32")
