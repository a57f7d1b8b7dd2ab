"""Ensembles: folds, pooled out-of-fold threshold, the card, resuming, tampering, prediction,
the OOD check (torch and ONNX engines).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_fastai.card import EnsembleCard, read_card
from pneumo_fastai.cli import main
from pneumo_fastai.config import CLASSES
from pneumo_fastai.data.layout import discover
from pneumo_fastai.errors import ModelFileError, PneumoError
from pneumo_fastai.figures.metrics import choose_threshold
from pneumo_fastai.inference.ood_scores import conformal_quantile
from pneumo_fastai.inference.predict import load_model
from pneumo_fastai.training.ensemble import (
    EnsembleResult,
    member_configs,
    pooled_predictions,
    train_ensemble,
)
from pneumo_fastai.training.train import train
from pneumo_fastai.valid_csv import ValidTable

from ..helpers.data import SHARED_DATA
from ..helpers.system import one_torch_thread

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def ensemble(trained, ensemble_config) -> EnsembleResult:
    """The session's 2-fold ensemble on the 60 real X-rays (read-only: copy it to change it)."""
    return trained(ensemble_config).result


@pytest.fixture(scope="module")
def seeds_config(ensemble_config):
    """A --seeds ensemble of two members trained on one split."""
    return ensemble_config.replace(folds=0, seeds=2, name="sens")


@pytest.fixture(scope="module")
def seed_ensemble(trained, seeds_config) -> EnsembleResult:
    return trained(seeds_config).result


def _copy(card_path: Path, folder: Path) -> Path:
    """The ensemble's card and pooled predictions copied into `folder`, its other files (graph,
    members) hard-linked (a symbolic link out of an export's folder is refused); the copy's card."""
    members = folder / f"{card_path.stem}.members"
    members.mkdir(parents=True)
    for f in card_path.parent.glob(f"{card_path.stem}.*"):
        if f.suffix in (".json", ".csv"):
            (folder / f.name).write_bytes(f.read_bytes())
        elif f.is_file():
            os.link(f, folder / f.name)
    for f in (card_path.parent / members.name).iterdir():
        os.link(f, members / f.name)
    return folder / card_path.name


def _tamper(path: Path, edit: Callable[[bytes], bytes]) -> None:
    """Replace a (linked) file by an edited copy, leaving the original alone."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(edit(data))


@pytest.fixture(scope="module")
def onnx_ensembles(ensemble, seed_ensemble, tmp_path_factory) -> dict[str, Path]:
    """Copies of both ensembles with their one ONNX graph written."""
    pytest.importorskip("onnxruntime", reason="onnxruntime comes with the [onnx] extra")
    from pneumo_fastai.inference.onnx_export import export_onnx

    copies = {}
    for kind, result in (("folds", ensemble), ("seeds", seed_ensemble)):
        copies[kind] = _copy(result.card_path, tmp_path_factory.mktemp(f"onnx_{kind}"))
        with one_torch_thread():
            export_onnx(copies[kind])
    return copies


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_card_lists_its_members_and_round_trips(ensemble):
    card = read_card(ensemble.card_path)
    assert isinstance(card, EnsembleCard) and card == ensemble.card
    assert [m.name for m in card.members] == ["ens-fold0", "ens-fold1"]
    assert card.data.method == "folds" and card.data.k == 2
    for member, path in zip(card.members, ensemble.members, strict=True):
        assert (ensemble.card_path.parent / member.card) == path and "weights" in member.files
    assert json.loads(card.to_json()) == json.loads(ensemble.card_path.read_text())


def test_out_of_fold_predictions_cover_every_training_image_once(ensemble, real_subset):
    pooled = _rows(ensemble.card_path.with_suffix(".valid.csv"))
    names = [r["file"] for r in pooled]
    every = sorted(f.relative_to(real_subset).as_posix() for f in discover(real_subset).files)
    assert sorted(names) == every
    members = [r["file"] for p in ensemble.members for r in _rows(p.with_suffix(".valid.csv"))]
    assert sorted(members) == every, "each image validated by exactly one member"


def test_the_threshold_is_chosen_on_the_out_of_fold_predictions_only(ensemble):
    pooled = _rows(ensemble.card_path.with_suffix(".valid.csv"))
    y = np.array([CLASSES.index(r["label"]) for r in pooled])
    p = np.array([float(r["probability"]) for r in pooled])
    expected = choose_threshold(y, p, ensemble.card.decision_threshold.target_sensitivity)
    assert ensemble.card.decision_threshold.value == pytest.approx(expected)
    assert "out-of-fold" in ensemble.card.decision_threshold.rule


def test_ensemble_predictions_are_the_mean_of_the_members(ensemble, real_subset):
    files = sorted((real_subset / "train" / "PNEUMONIA").iterdir())[:4]
    files += sorted((real_subset / "train" / "NORMAL").iterdir())[:4]
    with one_torch_thread():
        mean = load_model(ensemble.card_path, precision="fp32").predict_batch(files)
        members = [load_model(p, precision="fp32").predict_batch(files) for p in ensemble.members]
    expected = np.mean([[q.probability for q in m] for m in members], axis=0)
    np.testing.assert_allclose([q.probability for q in mean], expected, atol=1e-6)
    threshold = ensemble.card.decision_threshold.value
    assert [q.label for q in mean] == [CLASSES[int(p >= threshold)] for p in expected]


def test_a_rerun_keeps_finished_members_and_trains_only_the_missing_one(
    ensemble, ensemble_config, tmp_path
):
    card = _copy(ensemble.card_path, tmp_path / "copy")  # the session's ensemble stays whole
    config = ensemble_config.replace(exports=card.parent)
    again = train_ensemble(config, progress=False, log=lambda _: None)
    assert again.trained == []
    missing = card.parent / ensemble.members[1].relative_to(ensemble.card_path.parent)
    for f in missing.parent.glob(f"{missing.stem}.*"):
        f.unlink()  # as if the run had been stopped before member 1 finished
    with one_torch_thread():
        resumed = train_ensemble(config, progress=False, log=lambda _: None)
    assert resumed.trained == [1] and read_card(resumed.card_path).members[1].name == "ens-fold1"


def _lower_threshold(data: bytes) -> bytes:
    card = json.loads(data)
    card["decision_threshold"]["value"] = 0.01
    return json.dumps(card).encode()


def test_a_tampered_member_is_refused_by_name(ensemble, tmp_path):
    card = _copy(ensemble.card_path, tmp_path / "copy")
    _tamper(card.parent / "ens.members" / "ens-fold1.json", _lower_threshold)
    with pytest.raises(ModelFileError, match=r"Member ens-fold1 .* does not match"):
        load_model(card)


@pytest.mark.parametrize("suffix", [".safetensors", ".valid.csv"])
def test_a_finished_member_with_a_corrupted_file_is_not_reused(
    ensemble, ensemble_config, tmp_path, suffix
):
    card = _copy(ensemble.card_path, tmp_path / "copy")
    _tamper(
        card.parent / "ens.members" / f"ens-fold0{suffix}", lambda data: data[:-8] + b"corrupt!"
    )
    config = ensemble_config.replace(exports=card.parent)
    with pytest.raises(
        ModelFileError, match=r"Member ens-fold0 cannot be reused: .* does not match"
    ):
        train_ensemble(config, progress=False, log=lambda _: None)
    assert read_card(card) == ensemble.card, "the ensemble's card is left as it was"


def _held_out_ratios(member: Path) -> list[tuple[str, float]]:
    """(file, OOD score / the member's threshold) of a member's validation images."""
    threshold = read_card(member).ood.threshold
    return [
        (r["file"], float(r["ood_score"]) / threshold)
        for r in _rows(member.with_suffix(".valid.csv"))
    ]


def test_the_ood_threshold_is_a_conformal_quantile_of_held_out_combined_scores(
    ensemble, seed_ensemble
):
    folds = sorted(r for m in ensemble.members for r in _held_out_ratios(m))
    seeds = [_held_out_ratios(m) for m in seed_ensemble.members]
    mean = [(f, float(np.mean([t[i][1] for t in seeds]))) for i, (f, _) in enumerate(seeds[0])]
    for result, expected in ((ensemble, folds), (seed_ensemble, mean)):
        card = read_card(result.card_path)
        pooled = _rows(result.card_path.with_suffix(".valid.csv"))
        assert [r["file"] for r in pooled] == [f for f, _ in expected]
        scores = [float(r["ood_score"]) for r in pooled]
        np.testing.assert_allclose(scores, [x for _, x in expected], rtol=1e-12)
        assert card.ood.threshold == pytest.approx(conformal_quantile(scores, card.ood.alpha))
        assert card.ood.n_valid == len(scores)
        held_out = {"folds": "out-of-fold", "seeds": "shared validation split"}[card.data.method]
        assert held_out in card.ood.threshold_rule
        assert card.ood.valid_flagged <= card.ood.alpha


@pytest.mark.parametrize("kind", ["folds", "seeds"])
def test_an_ensemble_flags_a_photo_and_not_a_held_out_xray_on_both_engines(
    ensemble, seed_ensemble, onnx_ensembles, kind, tmp_path
):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image comes with [dev]")
    Image.fromarray(skimage_data.astronaut()).convert("L").save(photo := tmp_path / "gray.png")
    files = [  # a grayscale photo, and two X-rays not among the 60 the ensembles saw
        photo,
        sorted((SHARED_DATA / "train" / "NORMAL").iterdir())[200],
        sorted((SHARED_DATA / "train" / "PNEUMONIA").iterdir())[300],
    ]
    result = {"folds": ensemble, "seeds": seed_ensemble}[kind]
    with one_torch_thread():
        torch_model = load_model(result.card_path, precision="fp32")
        torch_preds = torch_model.predict_batch(files)
    onnx_model = load_model(onnx_ensembles[kind], engine="onnx", threads=1)
    onnx_preds = onnx_model.predict_batch(files)
    thresholds = [read_card(m).ood.threshold for m in result.members]
    for model, preds in ((torch_model, torch_preds), (onnx_model, onnx_preds)):
        assert model.ood is not None and model.ood.scales == thresholds
        assert preds[0].ood and "features" in preds[0].ood_reason, preds[0]
        assert [p.ood for p in preds[1:]] == [False, False], preds[1:]
        assert all(p.probability is not None for p in preds), "flagged keeps its answer"
    for o, t in zip(onnx_preds, torch_preds, strict=True):
        assert o.ood_score == pytest.approx(t.ood_score, rel=1e-3)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_member_s_tampered_ood_statistics_are_refused(onnx_ensembles, engine, tmp_path):
    card = _copy(onnx_ensembles["folds"], tmp_path / "copy")
    stats = card.parent / "ens.members" / "ens-fold1.ood.safetensors"
    _tamper(stats, lambda data: data[:-8] + bytes(8))
    with pytest.raises(ModelFileError, match=r"ens-fold1\.ood\.safetensors does not match"):
        load_model(card, engine=engine)


def test_predict_with_the_onnx_engine_refuses_a_tampered_member_card_by_name(
    onnx_ensembles, tmp_path, monkeypatch, capsys
):
    card = _copy(onnx_ensembles["folds"], tmp_path / "copy")
    _tamper(card.parent / "ens.members" / "ens-fold1.json", _lower_threshold)
    xray = sorted((SHARED_DATA / "train" / "NORMAL").iterdir())[200]
    argv = ["pneumo-fastai", "predict", str(card), str(xray), "--engine", "onnx"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "Member ens-fold1" in capsys.readouterr().err


def test_a_config_of_an_ensemble_is_refused_by_single_training(ensemble_config, tmp_path):
    with pytest.raises(PneumoError, match="describes an ensemble"):
        train(ensemble_config.replace(exports=tmp_path))


def _table(rows: list[tuple]) -> ValidTable:
    """A member's validation predictions, as `read_valid` gives them."""
    files, labels, *columns = (list(c) for c in zip(*rows, strict=True))
    return ValidTable(files, labels, *(np.array(c, dtype=np.float64) for c in columns))


def test_seed_members_are_averaged_on_their_shared_split():
    tables = [_table([("x/1.png", "NORMAL", 0.2), ("x/2.png", "PNEUMONIA", 0.9)]),
              _table([("x/1.png", "NORMAL", 0.4), ("x/2.png", "PNEUMONIA", 0.7)])]  # fmt: skip
    pooled = pooled_predictions("seeds", tables)
    assert list(zip(pooled.files, pooled.labels, strict=True)) == [
        ("x/1.png", "NORMAL"),
        ("x/2.png", "PNEUMONIA"),
    ]
    assert pooled.probability.tolist() == pytest.approx([0.3, 0.8])


def test_seed_members_ood_scores_are_combined_on_each_member_s_scale():
    scores = {"a": (10.0, 30.0), "b": (300.0, 100.0)}
    tables = [
        _table([("x/1.png", "NORMAL", 0.2, one), ("x/2.png", "PNEUMONIA", 0.9, two)])
        for one, two in scores.values()
    ]
    pooled = pooled_predictions("seeds", tables, [20.0, 200.0])
    assert pooled.ood_score.tolist() == pytest.approx([(0.5 + 1.5) / 2, (1.5 + 0.5) / 2])
    assert [len(row) for row in pooled_predictions("seeds", tables).rows()] == [3, 3]


def test_fold_members_are_pooled_by_file_each_score_on_its_member_s_scale():
    tables = [_table([("x/3.png", "PNEUMONIA", 0.9, 40.0), ("x/1.png", "NORMAL", 0.2, 10.0)]),
              _table([("x/2.png", "NORMAL", 0.4, 300.0)])]  # fmt: skip
    pooled = pooled_predictions("folds", tables, [20.0, 200.0])
    assert pooled.rows() == [
        ("x/1.png", "NORMAL", 0.2, 0.5),
        ("x/2.png", "NORMAL", 0.4, 1.5),
        ("x/3.png", "PNEUMONIA", 0.9, 2.0),
    ]
    with pytest.raises(PneumoError, match="overlap"):
        pooled_predictions("folds", [tables[0], tables[0]])


def test_seed_members_share_one_validation_split(seeds_config, tmp_path):
    from pneumo_fastai.data.block import xray_datablock

    files = discover(seeds_config.data).files
    config = seeds_config.replace(exports=tmp_path)
    splits = [xray_datablock(member).splitter(files)[1] for member in member_configs(config)]
    assert splits[0] == splits[1]
