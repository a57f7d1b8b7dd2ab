"""The ONNX export and the torch-free engine: parity with torch, bad files, tampering, imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumo_fastai.card import read_card
from pneumo_fastai.errors import ModelFileError
from pneumo_fastai.inference.predict import load_model

from ..helpers.data import SHARED_DATA
from ..helpers.system import one_torch_thread

pytest.importorskip("onnxruntime", reason="onnxruntime comes with the [onnx] extra")
pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def xrays(n: int) -> list[Path]:
    normal = sorted((SHARED_DATA / "train" / "NORMAL").iterdir())[:n]
    return normal + sorted((SHARED_DATA / "train" / "PNEUMONIA").iterdir())[:n]


def test_the_card_records_the_graph(onnx_export: Path):
    card = read_card(onnx_export)
    assert card.files["onnx"].name == onnx_export.with_suffix(".onnx").name
    spec = card.onnx.input
    assert spec.dtype == "uint8" and spec.shape == ["batch", 1, 64, 64]
    assert spec.preprocessing == card.input.preprocessing
    assert card.onnx.parity_max_abs_diff <= 1e-4


def test_onnx_probabilities_equal_torch_fp32_and_every_label_agrees(onnx_export: Path, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    files = [*xrays(6), bad]
    with one_torch_thread():
        torch_preds = load_model(onnx_export, precision="fp32").predict_batch(files, bs=4)
    onnx_preds = load_model(onnx_export, engine="onnx", threads=1).predict_batch(files, bs=4)
    for t, o in zip(torch_preds, onnx_preds, strict=True):
        assert (t.file, t.error) == (o.file, o.error)
        if t.ok:
            assert o.probability == pytest.approx(t.probability, abs=1e-4)
            assert (o.label, o.label_argmax, o.ood) == (t.label, t.label_argmax, t.ood)
            assert o.ood_score == pytest.approx(t.ood_score, rel=1e-3)
    assert not onnx_preds[-1].ok and onnx_preds[-1].probability is None


def test_a_tampered_graph_is_refused_before_a_session_is_made(onnx_export: Path, tmp_path):
    for f in onnx_export.parent.glob(f"{onnx_export.stem}.*"):
        shutil.copy(f, tmp_path / f.name)
    graph = tmp_path / onnx_export.with_suffix(".onnx").name
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelFileError, match="does not match its model card"):
        load_model(tmp_path / onnx_export.name, engine="onnx")


def test_an_export_without_a_graph_says_how_to_make_one(real_export: Path):
    with pytest.raises(ModelFileError, match="export onnx"):
        load_model(real_export, engine="onnx")


def test_predict_with_the_onnx_engine_imports_neither_torch_nor_fastai(onnx_export, tmp_path):
    out = tmp_path / "preds.csv"
    script = (
        "import sys, json\n"
        "from pneumo_fastai.cli import main\n"
        f"sys.argv = ['pneumo-fastai', 'predict', {str(onnx_export)!r}, "
        f"{str(xrays(1)[0])!r}, '--engine', 'onnx', '--out', {str(out)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print(json.dumps({'code': code, 'heavy': [m for m in ('torch', 'fastai', 'torchvision') "
        "if m in sys.modules]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, result.stderr
    assert out.read_text().count("\n") == 2


def test_safetensors_weights_equal_a_pth_of_the_same_state(real_export: Path, tmp_path):
    import torch
    from safetensors.torch import load_file

    from pneumo_fastai.inference.loading import read_weights

    card = read_card(real_export)
    st = real_export.parent / card.files["weights"].name
    assert st.suffix == ".safetensors"
    torch.save(load_file(st), pth := tmp_path / "same.pth")
    a, b = read_weights(st), read_weights(pth)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_ensemble_exports_as_one_graph(tmp_path):
    import torch

    from pneumo_fastai.config import TrainConfig
    from pneumo_fastai.inference.onnx_export import OnnxGraph
    from pneumo_fastai.model import EnsembleModule, build_model

    torch.manual_seed(0)
    nets = [build_model(TrainConfig(size=32)).eval() for _ in range(2)]
    ens = EnsembleModule(nets, [0.5, 2.0]).eval()
    graph = OnnxGraph(ens, 1.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), features=True).eval()
    x = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        probs, feats = graph(x)
        xf = (x.float() / 255).expand(-1, 3, -1, -1)
        xf = (xf - 0.5) / 0.25
        expected = torch.exp(ens(xf))
    assert feats.shape == (3, 2, 512)
    np.testing.assert_allclose(probs.numpy(), expected.numpy(), atol=1e-6)
