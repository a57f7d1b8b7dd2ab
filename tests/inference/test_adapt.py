"""`pneumo-fastai adapt`: an export re-weighted to a site's class mix, applied by every engine."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo_fastai.card import read_card
from pneumo_fastai.config import ADAPT_MIN_IMAGES
from pneumo_fastai.inference.prior_shift import PriorShift, em_prevalence

from ..helpers.cli import run_main
from ..helpers.data import SHARED_DATA, write_image
from ..helpers.system import one_torch_thread

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def _site(folder: Path, n_normal: int, n_pneumonia: int) -> Path:
    """Real X-rays, unlabelled, in one flat folder (names kept: they are not read as labels)."""
    folder.mkdir(parents=True)
    for cls, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneumonia)):
        for src in sorted((SHARED_DATA / "train" / cls).iterdir())[-n:]:
            shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def adapted(onnx_export, tmp_path_factory):
    """The session's real export, with its ONNX graph, adapted to a site with 70 % NORMAL (into a
    sub-folder beside it)."""
    from pneumo_fastai.inference.adapt import adapt_export

    site = _site(tmp_path_factory.mktemp("adapt") / "site", 91, 39)
    with one_torch_thread():
        result = adapt_export(onnx_export, site, "site", onnx_export.parent / "adapted")
    return result, site


def test_the_card_records_the_estimate_and_points_at_the_same_weights(adapted):
    result, _ = adapted
    card = read_card(result.card_path)
    a = card.adaptation
    assert result.card_path.parent.name == "adapted" and card.name == "site"
    assert a.n_images + a.n_left_out == 130 and a.n_images >= ADAPT_MIN_IMAGES
    assert sum(a.target.values()) == pytest.approx(1) and sum(a.source.values()) == pytest.approx(1)
    for c in card.classes:
        lo, hi = a.interval[c]
        assert lo <= a.target[c] <= hi
    assert card.files["weights"].name.startswith("../")
    assert read_card(result.card_path).decision_threshold == result.card.decision_threshold
    t = card.decision_threshold.value
    assert a.raw_threshold == pytest.approx(result.shift.raw_threshold(t))


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_every_engine_applies_the_rule_to_its_unadapted_probabilities(adapted, engine):
    from pneumo_fastai import load_model

    result, site = adapted
    files = sorted(site.iterdir())[::13]
    with one_torch_thread():
        raw = load_model(_source(result), engine=engine, precision="fp32").predict_batch(files)
        got = load_model(result.card_path, engine=engine, precision="fp32").predict_batch(files)
    p = np.array([r.probability for r in raw])
    want = result.shift.apply(np.column_stack([1 - p, p]))[:, 1]
    assert np.allclose([g.probability for g in got], want, atol=1e-6)
    t = result.card.decision_threshold.value
    assert [g.label for g in got] == ["PNEUMONIA" if q >= t else "NORMAL" for q in want]


def _source(result) -> Path:
    return result.card_path.parent.parent / f"{result.card.adaptation.base.name}.json"


def test_em_on_the_sites_unadapted_probabilities_gives_the_cards_estimate(adapted):
    from pneumo_fastai import load_model

    result, site = adapted
    model = load_model(_source(result), precision="auto")
    model.shift = None
    p = np.array([q.probability for q in model.predict_batch(sorted(site.iterdir())) if not q.ood])
    estimate = em_prevalence(np.column_stack([1 - p, p]), result.shift.source)
    assert estimate == pytest.approx(result.shift.target, abs=0.02)


def test_too_few_x_rays_are_refused_saying_how_many_are_needed(
    real_export, tmp_path, monkeypatch, capsys
):
    site = _site(tmp_path / "small", 10, 10)
    args = [real_export, site, "--name", "small", "--exports", tmp_path]
    code = run_main(monkeypatch, "adapt", *args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"needs at least {ADAPT_MIN_IMAGES}" in err and "of 20 file(s)" in err
    assert not (tmp_path / "small.json").exists()


@pytest.mark.parametrize("content", ["empty", "not images"])
def test_an_empty_or_non_image_folder_is_refused(
    real_export, tmp_path, content, monkeypatch, capsys
):
    site = tmp_path / "site"
    site.mkdir()
    if content == "not images":
        (site / "notes.txt").write_text("no X-rays here")
        write_image(site / "photo.gif", seed=0)  # not a suffix the engines read
    code = run_main(monkeypatch, "adapt", real_export, site, "--name", "x", "--exports", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "No images found" in err


def test_a_three_class_export_and_its_own_name_are_refused(real_export, tmp_path):
    from pneumo_fastai.errors import PneumoError
    from pneumo_fastai.inference.adapt import adapt_export

    with pytest.raises(PneumoError, match="would overwrite"):
        adapt_export(real_export, tmp_path, real_export.stem)
    three = json.loads(real_export.read_text()) | {"classes": ["NORMAL", "BACTERIA", "VIRUS"]}
    (tmp_path / "three.json").write_text(json.dumps(three))
    with pytest.raises(PneumoError, match="binary NORMAL vs PNEUMONIA"):
        adapt_export(tmp_path / "three.json", tmp_path, "x")


def test_deciding_with_the_cards_threshold_on_adapted_probabilities_moves_the_raw_threshold():
    more_normal = PriorShift(np.array([0.3, 0.7]), np.array([0.6, 0.4]))
    assert more_normal.raw_threshold(0.5) > 0.5
    assert PriorShift(np.array([0.3, 0.7]), np.array([0.1, 0.9])).raw_threshold(0.5) < 0.5
