"""Flag inputs unlike the training X-rays: input checks, the feature check, the CLI policy."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pneumo_fastai.cli import app
from pneumo_fastai.inference.ood_check import OodCheck, combined_score
from pneumo_fastai.inference.ood_scores import (
    GaussianStats,
    conformal_quantile,
    conformal_threshold,
    input_problem,
)
from pneumo_fastai.inference.predict import load_model

from ..helpers.cards import old_export_with_fresh_weights
from ..helpers.data import SHARED_DATA
from ..helpers.system import one_torch_thread

runner = CliRunner()


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _gray(w: int = 224, h: int = 224, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))


def test_input_checks_catch_colour_shape_size_and_blank_images():
    gray = _gray()
    colour = Image.merge("RGB", [gray, Image.new("L", gray.size, 0), gray])
    assert input_problem(gray, gray) is None
    assert "coloured" in input_problem(gray, colour)
    assert input_problem(gray, Image.merge("RGB", [gray] * 3)) is None, "gray stored as RGB is fine"
    assert "aspect ratio" in input_problem(_gray(600, 200))
    assert "too small" in input_problem(_gray(40, 40))
    assert "constant" in input_problem(Image.new("L", (300, 300), 128))
    assert input_problem(_gray(2500, 2000)) is None, "full-size originals are chest-radiograph-like"


def test_the_conformal_threshold_flags_about_alpha_and_never_below_the_floor():
    rng = np.random.default_rng(0)
    valid, train = rng.normal(size=1000), rng.normal(size=5000) - 1
    t = conformal_threshold(valid, train, 0.02)
    assert 0.01 <= (valid > t).mean() <= 0.03
    tiny = conformal_threshold(valid[:10], train, 0.02)
    assert tiny == valid[:10].max(), "(n+1) quantile of a small set: its largest value"
    assert conformal_quantile(valid, 0.02) == np.sort(valid)[981 - 1], "ceil(1001 * 0.98) = 981"
    assert conformal_threshold(valid, train + 10, 0.02) == pytest.approx(
        np.quantile(train + 10, 0.98)
    )


def test_an_ensemble_scores_each_member_on_its_own_threshold_s_scale():
    rng = np.random.default_rng(0)
    raw = [np.array([10.0, 40.0]), np.array([300.0, 100.0])]
    np.testing.assert_allclose(combined_score(raw, [20.0, 200.0]), [1.0, 1.25])
    np.testing.assert_array_equal(combined_score(raw[:1], [1.0]), raw[0])  # a single model's
    stats = [GaussianStats(rng.normal(size=(2, 4)), np.eye(4) * k) for k in (1.0, 50.0)]
    features = [rng.normal(size=(5, 4)) for _ in stats]
    check = OodCheck(stats, [2.0, 100.0], threshold=1.0)
    expected = (stats[0].scores(features[0]) / 2 + stats[1].scores(features[1]) / 100) / 2
    np.testing.assert_allclose(check.scores(features), expected)


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_photo_is_flagged_and_a_real_xray_is_not(real_export, tmp_path):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image comes with [dev]")
    photo = Image.fromarray(skimage_data.astronaut())
    photo.save(colour := tmp_path / "astronaut.png")
    photo.convert("L").save(gray := tmp_path / "astronaut_gray.png")
    xray = sorted((SHARED_DATA / "train" / "NORMAL").iterdir())[200]  # not among the 60 it saw
    with one_torch_thread():
        model = load_model(real_export, precision="fp32")
        preds = {p.file: p for p in model.predict_batch([colour, gray, xray])}
    assert preds[str(colour)].ood and "coloured" in preds[str(colour)].ood_reason
    assert preds[str(gray)].ood and "features" in preds[str(gray)].ood_reason
    assert preds[str(xray)].ood is False and preds[str(xray)].ood_score is not None
    assert all(p.probability is not None for p in preds.values()), "flagged keeps its answer"


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize(("policy", "code"), [("flag", 0), ("skip", 0), ("fail", 1)])
def test_the_ood_policy_of_predict(real_export, tmp_path, policy, code):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image comes with [dev]")
    Image.fromarray(skimage_data.coffee()).save(photo := tmp_path / "coffee.png")
    xray = sorted((SHARED_DATA / "train" / "PNEUMONIA").iterdir())[300]
    out = tmp_path / "preds.csv"
    with one_torch_thread():
        result = runner.invoke(
            app, ["predict", str(real_export), str(photo), str(xray), "--out", str(out),
                  "--ood-policy", policy],
        )  # fmt: skip
    assert result.exit_code == code, result.output
    rows = {r["file"]: r for r in _rows(out)}
    assert rows[str(photo)]["ood"] == "true" and rows[str(xray)]["ood"] == "false"
    assert (rows[str(photo)]["probability"] == "") == (policy == "skip")
    assert rows[str(xray)]["probability"] != ""


def test_an_export_without_ood_statistics_says_unknown_once(tmp_path):
    card = old_export_with_fresh_weights(tmp_path)
    img = _gray(256, 256)
    img.save(a := tmp_path / "a.png")
    img.save(b := tmp_path / "b.png")
    with one_torch_thread():
        result = runner.invoke(
            app, ["predict", str(card), str(a), str(b), "--out", str(tmp_path / "p.csv")]
        )
    assert result.exit_code == 0, result.output
    assert result.output.count("no OOD check") == 1
    rows = _rows(tmp_path / "p.csv")
    assert [r["ood"] for r in rows] == ["", ""]
