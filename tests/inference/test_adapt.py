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
        files = sorted((SHARED_DATA / "train" / cls).iterdir())
        for src in files[len(files) - n :]:  # the last n (none for n = 0)
            shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def adapted(onnx_export, tmp_path_factory):
    """The session's real export, with its ONNX graph, adapted to a site with 20 % NORMAL (into a
    sub-folder beside it). The 1-epoch export barely separates the classes: at 70 % NORMAL its EM
    estimate is "NORMAL alone", which adapt refuses (see the one-class test), and its OOD check,
    fitted on 40 images, flags 10 % of these: the label-shift test rejects the site, so the
    correction is forced (the test itself is checked in test_label_shift_test.py)."""
    from pneumo_fastai.inference.adapt import adapt_export

    site = _site(tmp_path_factory.mktemp("adapt") / "site", 30, 120)
    with one_torch_thread():
        result = adapt_export(
            onnx_export, site, "site", onnx_export.parent / "adapted", force_prior=True
        )
    return result, site


def test_the_card_records_the_estimate_and_points_at_the_same_weights(adapted):
    result, _ = adapted
    card = read_card(result.card_path)
    a = card.adaptation
    assert result.card_path.parent.name == "adapted" and card.name == "site"
    assert a.n_images + a.n_left_out == 150 and a.n_images >= ADAPT_MIN_IMAGES
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
    three = json.loads(real_export.read_text()) | {
        "classes": ["NORMAL", "BACTERIA", "VIRUS"],
        "task": "subtype",
    }
    (tmp_path / "three.json").write_text(json.dumps(three))
    with pytest.raises(PneumoError, match="binary NORMAL vs PNEUMONIA"):
        adapt_export(tmp_path / "three.json", tmp_path, "x")


def test_deciding_with_the_cards_threshold_on_adapted_probabilities_moves_the_raw_threshold():
    more_normal = PriorShift(np.array([0.3, 0.7]), np.array([0.6, 0.4]))
    assert more_normal.raw_threshold(0.5) > 0.5
    assert PriorShift(np.array([0.3, 0.7]), np.array([0.1, 0.9])).raw_threshold(0.5) < 0.5


def _labelled(folder: Path, n_normal: int, n_pneumonia: int) -> Path:
    """A labelled site sample: real X-rays in NORMAL/ and PNEUMONIA/ (the first of train's)."""
    for cls, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneumonia)):
        (folder / cls).mkdir(parents=True)
        for src in sorted((SHARED_DATA / "train" / cls).iterdir())[:n]:
            shutil.copy(src, folder / cls / src.name)
    return folder


@pytest.fixture(scope="module")
def labelled(onnx_export, tmp_path_factory):
    """The session's real export fitted to a labelled sample of 25 NORMAL and 30 PNEUMONIA."""
    from pneumo_fastai.inference.adapt import adapt_export

    sample = _labelled(tmp_path_factory.mktemp("labelled") / "sample", 25, 30)
    with one_torch_thread():
        result = adapt_export(onnx_export, None, "lab", onnx_export.parent / "lab", labels=sample)
    return result, sample


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_labelled_fit_is_applied_by_every_engine_at_the_sites_threshold(labelled, engine):
    from pneumo_fastai import load_model
    from pneumo_fastai.inference.site_labels import rescale

    result, sample = labelled
    a = result.card.adaptation
    assert a.kind == "labels" and a.labels.n == result.fit.n
    assert result.card.decision_threshold.value == pytest.approx(result.fit.threshold)
    files = sorted(sample.rglob("*.jpeg"))[::7]
    with one_torch_thread():
        raw = load_model(_source(result), engine=engine, precision="fp32").predict_batch(files)
        got = load_model(result.card_path, engine=engine, precision="fp32").predict_batch(files)
    want = rescale(np.array([r.probability for r in raw]), a.labels.scale)
    assert np.allclose([g.probability for g in got], want, atol=1e-6)
    t = result.fit.threshold
    assert [g.label for g in got] == ["PNEUMONIA" if q >= t else "NORMAL" for q in want]


def test_a_labelled_sample_too_small_or_with_unknown_files_is_refused(
    real_export, tmp_path, monkeypatch, capsys
):
    small = _labelled(tmp_path / "small", 5, 30)
    args = ["--name", "x", "--exports", tmp_path]
    assert run_main(monkeypatch, "adapt", real_export, "--labels", small, *args) == 2
    err = capsys.readouterr().err
    assert "at least 10 NORMAL and 20 PNEUMONIA" in err and "Traceback" not in err
    listing = tmp_path / "labels.csv"
    listing.write_text("file,label\nsmall/NORMAL/nope.jpeg,NORMAL\n")
    assert run_main(monkeypatch, "adapt", real_export, "--labels", listing, *args) == 2
    assert "do not exist" in capsys.readouterr().err
    listing.write_text("file,label\n../../etc/x.jpeg,NORMAL\n")
    assert run_main(monkeypatch, "adapt", real_export, "--labels", listing, *args) == 2
    assert "without '..'" in capsys.readouterr().err
    listing.write_text("file,label\nsmall/NORMAL/x.jpeg,COVID\n")
    assert run_main(monkeypatch, "adapt", real_export, "--labels", listing, *args) == 2
    assert "other than NORMAL and PNEUMONIA: COVID" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_many_copies_of_one_image_are_refused_as_too_few_distinct(
    real_export, tmp_path, monkeypatch, capsys
):
    site = tmp_path / "copies"
    site.mkdir()
    one = sorted((SHARED_DATA / "train" / "NORMAL").iterdir())[0]
    for i in range(ADAPT_MIN_IMAGES + 20):
        shutil.copy(one, site / f"{i:04d}.jpeg")
    code = run_main(monkeypatch, "adapt", real_export, site, "--name", "x", "--exports", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and f"{ADAPT_MIN_IMAGES + 19} repeating another file's bytes" in err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("name", ["sub/site", "../up", ".hidden"])
def test_a_name_that_is_not_a_plain_file_name_is_refused(
    real_export, tmp_path, name, monkeypatch, capsys
):
    code = run_main(monkeypatch, "adapt", real_export, tmp_path, "--name", name)
    assert code == 2 and "cannot name an export" in capsys.readouterr().err


def test_an_existing_card_is_replaced_only_with_force(real_export, adapted, tmp_path, monkeypatch):
    from pneumo_fastai.errors import PneumoError
    from pneumo_fastai.inference.adapt import adapt_export

    other = tmp_path / "other.json"
    other.write_text(real_export.read_text())
    _, site = adapted
    with pytest.raises(PneumoError, match="pass --force"):
        adapt_export(real_export, site, "other", tmp_path)
    assert other.read_text() == real_export.read_text()


def test_a_rejected_assumption_writes_nothing_and_exits_3_unless_forced(
    real_export, adapted, tmp_path, monkeypatch, capsys
):
    from pneumo_fastai.inference import adapt as adapt_module
    from pneumo_fastai.inference.label_shift_test import ShiftTest

    rejecting = ShiftTest(0.2, 2.0, 0.001, 0.01, 0.9)
    monkeypatch.setattr(adapt_module, "label_shift_test", lambda *a, **k: rejecting)
    _, site = adapted
    args = [real_export, site, "--name", "x", "--exports", tmp_path]
    assert run_main(monkeypatch, "adapt", *args) == 3
    err = capsys.readouterr().err
    assert "No correction written" in err and "--labels" in err and "p = 0.001" in err
    assert not (tmp_path / "x.json").exists()
    assert run_main(monkeypatch, "adapt", *args, "--force-prior") == 0
    test = read_card(tmp_path / "x.json").adaptation.shift_test
    assert test.rejected and test.forced


def test_a_site_that_looks_like_one_class_is_refused():
    from pneumo_fastai.errors import DataError
    from pneumo_fastai.inference.adapt import _fit_prior

    class Binary:
        classes = ("NORMAL", "PNEUMONIA")

    rng = np.random.default_rng(0)
    p_valid = np.r_[rng.uniform(0.0, 0.1, 300), rng.uniform(0.9, 1.0, 900)]
    y_valid = np.r_[np.zeros(300), np.ones(900)]
    counts = dict(unreadable=0, flagged=0, repeats=0, total=150)
    with pytest.raises(DataError, match="look like NORMAL alone"):
        _fit_prior(Binary(), rng.uniform(0.0, 0.05, 150), p_valid, y_valid, 50, 0, counts)


def test_the_web_demo_says_what_an_adapted_export_was_fitted_to(adapted, labelled):
    from pneumo_fastai.serve.app import adaptation_lines

    prior = adaptation_lines(read_card(adapted[0].card_path))
    assert len(prior) == 1 and "site `site`" in prior[0] and "**forced**" in prior[0]
    lab = adaptation_lines(read_card(labelled[0].card_path))
    n = labelled[0].fit.n  # 25 and 30, less any the OOD check flagged
    assert "site `sample`" in lab[0] and f"{n['NORMAL']} NORMAL and {n['PNEUMONIA']} PNEU" in lab[0]
    assert "/" not in lab[0].split("site `")[1].split("`")[0]  # a name, no server path


def test_a_folder_of_one_class_is_refused_through_the_command(
    real_export, tmp_path, monkeypatch, capsys
):
    site = _site(tmp_path / "normals", ADAPT_MIN_IMAGES + 50, 0)  # some are flagged as OOD
    code = run_main(monkeypatch, "adapt", real_export, site, "--name", "x", "--exports", tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "alone" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()
