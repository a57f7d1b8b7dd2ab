"""The three-class task: labels from names, the split, training, reload, evaluation."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pneumo_fastai.config import SUBTYPES, TrainConfig
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.names import patient_id, subtype_of
from pneumo_fastai.data.split import SeededSplitter

from ..helpers.data import SHARED_DATA, require_shared_data
from ..helpers.system import one_torch_thread


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("PNEUMONIA/person1000_bacteria_2931.jpeg", "BACTERIA"),
        ("PNEUMONIA/person1000_virus_1681.jpeg", "VIRUS"),
        ("PNEUMONIA/person1_virus_6_1.jpeg", "VIRUS"),
        ("PNEUMONIA/Person12_Bacteria_3.JPEG", "BACTERIA"),
        ("PNEUMONIA/scan_from_elsewhere.png", None),
        ("PNEUMONIA/person3_bacteria_virus_1.jpeg", None),
        ("NORMAL/IM-0115-0001.jpeg", "NORMAL"),
        ("NORMAL/NORMAL2-IM-0587-0001-0002.jpeg", "NORMAL"),
    ],
)
def test_subtype_comes_from_the_name_and_is_never_guessed(name, expected):
    assert subtype_of(Path("train") / name) == expected


@pytest.mark.shared_data
def test_every_name_in_the_shared_data_has_a_subtype():
    files = discover(require_shared_data()).files
    counts = Counter(subtype_of(f) for f in files)
    assert counts == {"NORMAL": 1341, "BACTERIA": 2530, "VIRUS": 1345}


@pytest.mark.shared_data
def test_the_split_is_patient_grouped_and_stratified_on_three_classes():
    files = list(discover(require_shared_data()).files)
    train, valid = SeededSplitter(0.3, 42, "patient", task="subtype")(files)
    assert not {patient_id(files[i]) for i in train} & {patient_id(files[i]) for i in valid}
    for cls in SUBTYPES:
        n = sum(subtype_of(f) == cls for f in files)
        share = sum(subtype_of(files[i]) == cls for i in valid) / n
        assert 0.25 < share < 0.35, (cls, share)


@pytest.fixture(scope="module")
def real_subtype_run(trained, real_config, tmp_path_factory):
    """A 3-class export trained on 48 real X-rays and a PNEUMONIA file named without its kind."""
    shared = require_shared_data()
    root = tmp_path_factory.mktemp("subtype") / "chest_xray"
    picks = {"NORMAL": ("NORMAL", 16), "bacteria": ("PNEUMONIA", 16), "virus": ("PNEUMONIA", 16)}
    for word, (folder, n) in picks.items():
        dest = root / "train" / folder
        dest.mkdir(parents=True, exist_ok=True)
        chosen = [f for f in sorted((shared / "train" / folder).iterdir())
                  if folder == "NORMAL" or word in f.name][:n]  # fmt: skip
        for f in chosen:
            shutil.copy(f, dest / f.name)
    (root / "train" / "PNEUMONIA" / "scan_from_elsewhere.jpeg").write_bytes(chosen[0].read_bytes())
    return trained(real_config.replace(data=root, task="subtype", seed=2, name="sub"))


@pytest.fixture(scope="module")
def real_subtype_export(real_subtype_run) -> Path:
    return real_subtype_run.card


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_file_without_its_kind_in_the_name_is_left_out_and_said_so(real_subtype_run):
    said = [m for m in real_subtype_run.messages if "scan_from_elsewhere.jpeg" in m]
    assert any("never guessed" in m for m in said)


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_card_records_the_task_and_the_classes(real_subtype_export):
    card = json.loads(real_subtype_export.read_text())
    assert card["task"] == "subtype" and card["classes"] == list(SUBTYPES)
    assert card["positive_class"] == "PNEUMONIA"
    assert set(card["validation"]["subtype"]) >= {"accuracy", "macro_auc", "recall_virus"}
    assert (
        sum(card["data"]["train_counts"].values()) + sum(card["data"]["valid_counts"].values())
        == 48
    )


@pytest.mark.shared_data
@pytest.mark.slow
def test_predictions_give_three_probabilities_and_their_collapse(real_subtype_export, tmp_path):
    from pneumo_fastai.inference.predict import load_model

    files = sorted((SHARED_DATA / "train" / "PNEUMONIA").iterdir())[100:104]
    with one_torch_thread():
        preds = load_model(real_subtype_export, precision="fp32").predict_batch(files)
    for p in preds:
        probs = p.class_probabilities
        assert list(probs) == list(SUBTYPES) and sum(probs.values()) == pytest.approx(1.0)
        assert p.probability == pytest.approx(probs["BACTERIA"] + probs["VIRUS"])
        assert p.label in ("NORMAL", "PNEUMONIA") and p.label_argmax in SUBTYPES
        assert set(p.row()) >= {"p_NORMAL", "p_BACTERIA", "p_VIRUS", "probability"}
    from pneumo_fastai import load_model as reload  # the package's lazy top-level name

    with one_torch_thread():  # loaded again, one file through `predict` (by its path as text)
        again = reload(str(real_subtype_export), precision="fp32").predict(str(files[0]))
    assert again.class_probabilities == pytest.approx(preds[0].class_probabilities, abs=1e-5)


@pytest.mark.shared_data
@pytest.mark.slow
def test_evaluation_of_a_three_class_export_writes_every_figure_and_plot(
    real_subtype_export, tmp_path
):
    from pneumo_fastai.evaluation.evaluate import evaluate
    from pneumo_fastai.evaluation.plots import PLOTS, draw_all
    from pneumo_fastai.evaluation.report import write_report

    test = tmp_path / "test"
    for folder, word, n in (
        ("NORMAL", "", 6),
        ("PNEUMONIA", "bacteria", 5),
        ("PNEUMONIA", "virus", 5),
    ):
        (test / folder).mkdir(parents=True, exist_ok=True)
        chosen = [f for f in sorted((SHARED_DATA / "train" / folder).iterdir()) if word in f.name]
        for f in chosen[200 : 200 + n]:
            shutil.copy(f, test / folder / f.name)
    with one_torch_thread():
        ev = evaluate(real_subtype_export, test=test, n_boot=50, num_workers=0)
        plots = draw_all(ev.run, tmp_path / "report" / PLOTS, n_top=4, n_correct=2)
        files = write_report(ev, plots, tmp_path / "report")
    sub = ev.subtype
    assert sub["classes"] == list(SUBTYPES) and sub["n_samples"] == 16
    for name in ("accuracy", "balanced_accuracy", "macro_auc", "bacteria_vs_virus_accuracy",
                 "precision_bacteria", "recall_virus", "f1_normal"):  # fmt: skip
        figure = sub["metrics"][name]
        assert figure["value"] is None or figure["ci_low"] <= figure["value"] <= figure["ci_high"]
    counts = np.array(sub["confusion_matrix"]["counts"])
    assert counts.shape == (3, 3) and counts.sum() == 16
    assert counts.sum(axis=1).tolist() == [6, 5, 5]
    metrics = json.loads(files.metrics.read_text())
    assert metrics["subtype"]["confusion_matrix"]["counts"] == counts.tolist()
    assert "Three classes" in files.markdown.read_text()
    from rich.console import Console

    from pneumo_fastai.cli.render import print_evaluation

    console = Console(record=True, width=200)
    print_evaluation(ev, files, console)
    assert "Three classes: accuracy " in console.export_text()
    assert {"confusion_matrix", "top_losses", "roc", "gradcam_top_losses"} <= set(plots)
    assert all(p.stat().st_size > 0 for p in plots.values())


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_onnx_engine_gives_the_three_probabilities_too(real_subtype_export, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime comes with the [onnx] extra")
    from pneumo_fastai.inference.onnx_export import export_onnx
    from pneumo_fastai.inference.predict import load_model

    for f in real_subtype_export.parent.glob(f"{real_subtype_export.stem}.*"):
        shutil.copy(f, tmp_path / f.name)
    card = tmp_path / real_subtype_export.name
    with one_torch_thread():
        export_onnx(card)
        torch_preds = load_model(card, precision="fp32").predict_batch(_some_files())
    onnx_preds = load_model(card, engine="onnx").predict_batch(_some_files())
    for t, o in zip(torch_preds, onnx_preds, strict=True):
        assert o.class_probabilities == pytest.approx(t.class_probabilities, abs=1e-4)
        assert (o.label, o.label_argmax) == (t.label, t.label_argmax)


def _some_files() -> list[Path]:
    return sorted((SHARED_DATA / "train" / "PNEUMONIA").iterdir())[300:304]


@pytest.mark.parametrize("task", ["binary", "subtype"])
def test_the_vocab_keeps_the_configured_class_order(task):
    """Column i of every prediction is config.classes[i]: fastai must not sort the vocab (sorted,
    the subtype classes would read BACTERIA, NORMAL, VIRUS, and P(PNEUMONIA) would sum the wrong
    columns)."""
    from pneumo_fastai.data.block import xray_datablock
    from pneumo_fastai.inference.loading import inference_datablock

    config = TrainConfig(task=task, size=32)
    training_vocab = xray_datablock(config).type_tfms[1][0].vocab
    inference_vocab = inference_datablock(config, labelled=True).type_tfms[1][0].vocab
    assert list(training_vocab) == list(inference_vocab) == list(config.classes)
