"""The session's full evaluation of the tiny export, read by test_evaluate, test_report and
test_plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..helpers.evaluation import Done, full_evaluation
from ..helpers.system import one_torch_thread


@pytest.fixture(scope="session")
def done(tiny_export: Path, evaluation_data: Path, tmp_path_factory) -> Done:
    """`tiny_export` evaluated once on the evaluation dataset's test split, with TTA, a
    threshold re-chosen for 90 % sensitivity, every plot and the report."""
    with one_torch_thread():
        return full_evaluation(tiny_export, evaluation_data, tmp_path_factory.mktemp("report"))
