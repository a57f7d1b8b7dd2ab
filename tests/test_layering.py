"""The road's direction: inference and evaluation never import training; imports stay lazy.

Each check runs in a fresh interpreter and reads `sys.modules`, so that nothing this test
process imported earlier can hide an import.
"""

import json
import subprocess
import sys

import pytest


def _modules_after(statement: str) -> list[str]:
    script = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "pneumo_fastai.inference.loading",
        "pneumo_fastai.inference.predict",
        "pneumo_fastai.evaluation.evaluate",
        "pneumo_fastai.evaluation.plots",
        "pneumo_fastai.evaluation.report",
    ],
)
def test_inference_and_evaluation_do_not_import_training(module):
    loaded = _modules_after(f"import {module}")
    assert module in loaded
    assert not [m for m in loaded if m.startswith("pneumo_fastai.training")]
    assert "accelerate" not in loaded and "fastai.distributed" not in loaded


def test_load_model_does_not_import_accelerate_or_the_dataset_audit():
    loaded = _modules_after("from pneumo_fastai import load_model")
    assert "pneumo_fastai.inference.predict" in loaded
    for absent in ("accelerate", "pneumo_fastai.training.train", "pneumo_fastai.datatools.check"):
        assert absent not in loaded, absent


def test_import_pneumo_fastai_is_lazy():
    loaded = _modules_after("import pneumo_fastai, pneumo_fastai.card, pneumo_fastai.data.layout")
    assert not {"torch", "fastai", "numpy"} & set(loaded)
