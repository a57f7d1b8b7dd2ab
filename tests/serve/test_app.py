"""The web demo's functions in process, on the tiny three-class export: the Grad-CAM target, one
decode and one forward pass per upload, nothing left behind by batch requests, the headline."""

from __future__ import annotations

import csv
import inspect
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pneumo_fastai.data import block, images
from pneumo_fastai.evaluation.gradcam import grad_cam, overlay, unnormalize_gray
from pneumo_fastai.inference.inputs import read_item
from pneumo_fastai.inference.predict import XrayClassifier, load_model
from pneumo_fastai.inference.results import Prediction

from ..helpers.data import write_image

pytest.importorskip("gradio", reason="the web demo needs the [serve] extra")
from pneumo_fastai.serve import app  # after the skip, for when Gradio is missing
from pneumo_fastai.serve.uploads import Uploads

pytestmark = pytest.mark.usefixtures("single_thread")  # `subtype_export` makes them slow


@pytest.fixture(scope="module")
def classifier(subtype_export: Path) -> XrayClassifier:
    model = load_model(subtype_export, device="cpu")
    assert model.card.classes == ["NORMAL", "BACTERIA", "VIRUS"]
    return model


@pytest.fixture
def xray(tmp_path: Path) -> Path:
    return write_image(tmp_path / "upload.png", seed=77, size=(90, 80))


def _sent(path: Path) -> str:
    """A copy of `path` in a folder of its own, as Gradio keeps an upload (the app deletes it)."""
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix="upload-"))
    return shutil.copy(path, folder / path.name)


def _shown_overlay(classifier: XrayClassifier, path: Path, target) -> np.ndarray:
    """The enlarged overlay the app would show if Grad-CAM explained `target` (own pass)."""
    image = read_item(path, classifier.size).image
    xb = classifier.exported.dataloader([image], bs=1, num_workers=0).one_batch()[0]
    cam = grad_cam(classifier.exported.learner.model, xb, target=target)
    return np.asarray(app._enlarged(overlay(unnormalize_gray(xb)[0], cam[0])), dtype=float)


def test_the_gradcam_panel_explains_pneumonia_not_bacteria_on_a_three_class_model(classifier, xray):
    *_, heat = app.predict_one(classifier, Uploads(0), _sent(xray))
    shown = np.asarray(heat, dtype=float)
    pneumonia = _shown_overlay(classifier, xray, target=(1, 2))  # BACTERIA and VIRUS as one
    bacteria = _shown_overlay(classifier, xray, target=1)
    assert shown.shape == pneumonia.shape
    assert np.abs(shown - pneumonia).mean() < 1  # the same map, up to rounding
    assert np.abs(bacteria - pneumonia).mean() > 3  # and not BACTERIA's alone
    assert np.abs(shown - bacteria).mean() > 3


def test_one_upload_is_decoded_once_and_run_through_the_network_once(classifier, xray, monkeypatch):
    decodes = []
    original = images.load_xray

    def counted(*args, **kwargs):
        decodes.append(args[0])
        return original(*args, **kwargs)

    original_decode = images.decode_xray

    def counted_decode(*args, **kwargs):
        decodes.append(args[0])
        return original_decode(*args, **kwargs)

    monkeypatch.setattr(images, "decode_xray", counted_decode)
    monkeypatch.setattr(images, "load_xray", counted)
    monkeypatch.setattr(block, "load_xray", counted)
    forwards = []
    body = classifier.exported.learner.model[0]
    hook = body.register_forward_hook(lambda *_: forwards.append(1))
    try:
        decision, probs, seen, heat = app.predict_one(classifier, Uploads(0), _sent(xray))
    finally:
        hook.remove()
    assert len(decodes) == 1 and len(forwards) == 1
    assert seen is not None and heat is not None
    # and what is shown is exactly what `predict` gives
    expected = classifier.predict(xray)
    assert probs == expected.class_probabilities
    assert f"P(PNEUMONIA) = {expected.probability:.4f}" in decision


def test_the_pictures_are_shown_at_a_readable_size(classifier, xray):
    _, _, seen, heat = app.predict_one(classifier, Uploads(0), _sent(xray))
    assert classifier.size < app.DISPLAY_PX
    assert seen.size == heat.size == (app.DISPLAY_PX, app.DISPLAY_PX)


def test_an_unreadable_upload_is_a_message_and_no_pictures(classifier, tmp_path):
    (bad := tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="Could not read this file"):  # gr.Warning, off a page
        decision, probs, seen, heat = app.predict_one(classifier, Uploads(0), str(bad))
    assert decision.startswith("**Could not read this file:**")
    assert probs is None and seen is None and heat is None


def test_the_headline_is_the_decision_at_the_threshold_not_the_argmax():
    pred = Prediction("a.png", 0.3, "PNEUMONIA", "NORMAL", 0.18)
    first, *rest = app.decision_markdown(pred).split("\n\n")
    assert first == "# PNEUMONIA"
    assert "NORMAL" not in first and "argmax): NORMAL" in " ".join(rest)
    assert "P(PNEUMONIA) = 0.3000 ≥ 0.18" in " ".join(rest)
    flagged = Prediction("a.png", 0.3, "PNEUMONIA", "NORMAL", 0.18, ood=True, ood_reason="odd")
    assert app.decision_markdown(flagged).startswith("**Not like the training X-rays: odd.**")


def _like_gradio(result):
    """What Gradio does with a handler's answer: take it (copying the CSV), then let it finish."""
    if inspect.isgenerator(result):
        rows, csv_path = next(result)
        text = Path(csv_path).read_text() if csv_path else None
        assert list(result) == []  # it answers once
        return rows, text
    rows, csv_path = result
    return rows, Path(csv_path).read_text() if csv_path else None


def test_batch_requests_leave_nothing_behind_and_the_csv_is_complete(
    classifier, tmp_path, monkeypatch
):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    uploads = tmp_path / "uploads"
    files = [write_image(uploads / f"x{i}.png", seed=i, size=(70, 60)) for i in range(3)]
    archive = uploads / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files[:2]:
            zf.write(f, f"inner/{f.name}")
    for _ in range(3):
        rows, text = _like_gradio(
            app.predict_batch(classifier, Uploads(0), [_sent(f) for f in [*files, archive]])
        )
        assert len(rows) == 5
        table = list(csv.DictReader(io.StringIO(text)))
        assert [r["file"] for r in table] == ["x0.png", "x1.png", "x2.png", "x0.png", "x1.png"]
        assert {"p_NORMAL", "p_BACTERIA", "p_VIRUS"} <= set(table[0])
    assert list(temp.iterdir()) == []
