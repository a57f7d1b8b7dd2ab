"""Files of every input kind the engines read, and the real export with its ONNX graph."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..helpers.data import every_kind
from ..helpers.system import one_torch_thread


@pytest.fixture(scope="session")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One file per kind `load_xray` reads (tests/helpers/data.py `every_kind`), in that order."""
    return every_kind(tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="session")
def onnx_export(real_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's real export with its ONNX graph written; read-only (a test may
    add a sub-folder beside it)."""
    from pneumo_fastai.inference.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    for f in real_export.parent.glob(f"{real_export.stem}.*"):
        shutil.copy(f, folder / f.name)
    card = folder / real_export.name
    with one_torch_thread():
        export_onnx(card)
    return card
