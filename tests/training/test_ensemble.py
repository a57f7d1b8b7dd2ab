"""Ensembles: folds, pooled out-of-fold threshold, the card, resuming, tampering, prediction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pneumo_fastai.card import EnsembleCard, read_card
from pneumo_fastai.config import CLASSES, TrainConfig
from pneumo_fastai.data.layout import discover
from pneumo_fastai.errors import ModelFileError, PneumoError
from pneumo_fastai.evaluation.metrics import choose_threshold
from pneumo_fastai.inference.predict import load_model
from pneumo_fastai.training.ensemble import pooled_predictions, train_ensemble

from ..conftest import one_torch_thread

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def _config(data: Path, exports: Path, **kw) -> TrainConfig:
    base = dict(data=data, exports=exports, size=64, bs=8, epochs=1, num_workers=0, seed=5,
                pretrained=False, name="ens", folds=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ensemble(real_subset, tmp_path_factory):
    with one_torch_thread():
        exports = tmp_path_factory.mktemp("ensemble")
        return train_ensemble(_config(real_subset, exports), progress=False, log=lambda _: None)


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


def test_a_rerun_keeps_finished_members_and_trains_only_the_missing_one(ensemble, real_subset):
    again = train_ensemble(
        _config(real_subset, ensemble.card_path.parent), progress=False, log=lambda _: None
    )
    assert again.trained == []
    missing = ensemble.members[1]
    for f in missing.parent.glob(f"{missing.stem}.*"):
        f.unlink()  # as if the run had been stopped before member 1 finished
    with one_torch_thread():
        resumed = train_ensemble(
            _config(real_subset, ensemble.card_path.parent), progress=False, log=lambda _: None
        )
    assert resumed.trained == [1] and read_card(resumed.card_path).members[1].name == "ens-fold1"


def test_a_tampered_member_is_refused_by_name(ensemble, tmp_path):
    folder = tmp_path / "copy"
    members = folder / "ens.members"
    members.mkdir(parents=True)
    for f in ensemble.card_path.parent.glob("ens.*"):
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    for f in ensemble.members[0].parent.iterdir():
        (members / f.name).symlink_to(f)
    card = json.loads((members / "ens-fold1.json").read_text())
    (members / "ens-fold1.json").unlink()
    card["decision_threshold"]["value"] = 0.01
    (members / "ens-fold1.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=r"Member ens-fold1 .* does not match"):
        load_model(folder / "ens.json")


def test_a_config_of_an_ensemble_is_refused_by_single_training(real_subset, tmp_path):
    from pneumo_fastai.training.train import train

    with pytest.raises(PneumoError, match="describes an ensemble"):
        train(_config(real_subset, tmp_path))


def test_seed_members_are_averaged_on_their_shared_split(tmp_path):
    rows = {"a": [("x/1.png", "NORMAL", 0.2), ("x/2.png", "PNEUMONIA", 0.9)],
            "b": [("x/1.png", "NORMAL", 0.4), ("x/2.png", "PNEUMONIA", 0.7)]}  # fmt: skip
    cards = []
    for name, table in rows.items():
        with open(tmp_path / f"{name}.valid.csv", "w", newline="") as f:
            csv.writer(f).writerows([("file", "label", "probability"), *table])
        cards.append(tmp_path / f"{name}.json")
    pooled = pooled_predictions("seeds", cards)
    assert [(f, label) for f, label, _ in pooled] == [
        ("x/1.png", "NORMAL"),
        ("x/2.png", "PNEUMONIA"),
    ]
    assert [p for *_, p in pooled] == pytest.approx([0.3, 0.8])
