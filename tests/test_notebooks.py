"""Every notebook in nbs/ runs top to bottom in quick mode (PNEUMO_QUICK=1) on the real X-rays.

The notebooks are executed in memory with nbclient, in a kernel started from this interpreter; the
committed files are never written. They share one work folder, so 03 and 04 reuse the model that
01 exported (each trains its own when run alone).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers.data import SHARED_DATA, require_shared_data

nbformat = pytest.importorskip("nbformat", reason="nbformat comes with the dev extra (nbmake)")
nbclient = pytest.importorskip("nbclient", reason="nbclient comes with the dev extra (nbmake)")

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(NBS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300  # one cell, in quick mode: minutes would mean quick mode is broken

pytestmark = [pytest.mark.notebooks, pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The kernel's environment: quick mode, the shared data, one work folder for all four."""
    require_shared_data()
    return {
        **os.environ,
        "PNEUMO_QUICK": "1",
        "PNEUMO_DATA": str(SHARED_DATA),
        "PNEUMO_NB_WORK": str(tmp_path_factory.mktemp("notebooks")),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # quiets a debugger warning from ipykernel
    }


def test_all_four_notebooks_are_here() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_training.ipynb",
        "03_evaluation.ipynb",
        "04_scripting.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path: Path, notebook_env: dict[str, str]) -> None:
    committed = path.read_bytes()
    nb = nbformat.reads(committed.decode(), as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NBS)}},  # cwd: nbs/, where nbsetup.py lives
    )
    client.execute(env=notebook_env)  # raises CellExecutionError, naming the cell, on any error
    assert path.read_bytes() == committed, f"executing {path.name} modified the committed file"
