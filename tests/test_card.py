"""The model card: validation on read, old schema-1 and schema-2 exports, and clear refusals."""

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pneumo_fastai.card import (
    CARD_SCHEMA_VERSION,
    AdaptedFrom,
    EnsembleCard,
    EnsembleOod,
    EnsembleTraining,
    ModelCard,
    ModelOod,
    OnnxEntry,
    parse_card,
    read_card,
    research_use,
    verify_file,
)
from pneumo_fastai.config import TrainConfig
from pneumo_fastai.errors import ModelFileError

from .helpers.cards import old_export_with_fresh_weights
from .helpers.data import write_image

SCHEMA1 = Path(__file__).parent / "fixtures" / "schema1"
SCHEMA2 = Path(__file__).parent / "fixtures" / "schema2"  # cards of 0.2 before `intended_use`


def _card() -> dict:
    return json.loads((SCHEMA1 / "schema1.json").read_text())


def _schema2(name: str) -> dict:
    return json.loads((SCHEMA2 / f"{name}.json").read_text())


def _section(card: dict, path: tuple) -> dict:
    """The part of a card's JSON at `path` (keys and list indices)."""
    for key in path:
        card = card[key]
    return card


def test_a_schema_1_card_reads_as_the_current_schema():
    card = read_card(SCHEMA1 / "schema1.json")
    assert card.schema_version == 1 and card.kind == "single"
    assert card.decision_threshold.value == pytest.approx(0.47704389691352844)
    assert card.input.size == 32 and card.classes == ["NORMAL", "PNEUMONIA"]
    assert card.train_config() == TrainConfig.from_dict(_card()["config"])
    assert verify_file(card, SCHEMA1 / "schema1.json", "valid").name == "schema1.valid.csv"


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("decision_threshold",), "decision_threshold"),
        (("decision_threshold", "value"), "decision_threshold.value"),
        (("input", "size"), "input.size"),
        (("files",), "files"),
    ],
)
def test_a_card_missing_a_field_is_refused_naming_it(drop, named):
    card = _card()
    del _section(card, drop[:-1])[drop[-1]]
    with pytest.raises(ModelFileError, match=rf"is missing {named}\b.*Re-export"):
        parse_card(card, "the card")


def test_a_newer_schema_or_a_foreign_json_is_refused():
    with pytest.raises(ModelFileError, match=f"schema {CARD_SCHEMA_VERSION + 1}, newer"):
        parse_card({**_card(), "schema_version": CARD_SCHEMA_VERSION + 1})
    with pytest.raises(ModelFileError, match="not a pneumo-fastai model card"):
        parse_card({"hello": "world"})
    with pytest.raises(ModelFileError, match=r"invalid values \(decision_threshold\.value"):
        parse_card({**_card(), "decision_threshold": {"value": 1.5, "rule": "x"}})


def test_unknown_keys_survive_a_round_trip():
    card = parse_card({**_card(), "notes": {"by": "a newer minor writer"}})
    assert json.loads(card.to_json())["notes"] == {"by": "a newer minor writer"}


def test_unknown_keys_of_typed_sections_survive_a_round_trip():
    data = _schema2("ens")
    data["ood"]["note"] = "a newer minor writer's"
    data["training"]["members"][1]["note"] = 1
    written = json.loads(parse_card(data).to_json())
    assert written["ood"]["note"] == "a newer minor writer's"
    assert written["training"]["members"][1]["note"] == 1


@pytest.mark.parametrize("name", ["single", "ens", "adapted"])
def test_a_schema_2_card_without_intended_use_loads_and_round_trips_unchanged(name):
    """Unchanged but for the defaults of sections added since (intended use, adaptation kind)."""
    data = _schema2(name)
    assert "intended_use" not in data
    card = parse_card(data, name)
    assert card.intended_use == research_use()
    written = json.loads(card.to_json())
    assert written.pop("intended_use") == research_use().model_dump()
    if data.get("adaptation"):  # what `adapt` records since the label-shift test and --labels
        added = {"kind": "prior", "shift_test": None, "labels": None}
        assert {k: written["adaptation"].pop(k) for k in added} == added
    assert written == data


def test_the_sections_that_were_loose_are_typed():
    single, ens, adapted = (parse_card(_schema2(n)) for n in ("single", "ens", "adapted"))
    assert isinstance(single, ModelCard) and isinstance(single.ood, ModelOod)
    assert isinstance(single.onnx, OnnxEntry) and single.onnx.input.shape == ["batch", 1, 32, 32]
    assert isinstance(ens, EnsembleCard) and isinstance(ens.training, EnsembleTraining)
    assert [m.name for m in ens.training.members] == [m.name for m in ens.members]
    assert isinstance(ens.ood, EnsembleOod) and sum(ens.ood.n_train_members) == ens.ood.n_train
    assert isinstance(adapted.adaptation.base, AdaptedFrom)
    assert all(len(bounds) == 2 for bounds in adapted.adaptation.interval.values())


def test_a_schema_1_card_gets_the_research_use():
    card = read_card(SCHEMA1 / "schema1.json")
    assert card.intended_use == research_use()
    assert "not for diagnosis" in card.intended_use.purpose.lower()
    assert "Kermany" in card.intended_use.population


@pytest.mark.parametrize(
    ("name", "drop"),
    [
        ("ens", ("training", "seconds")),
        ("ens", ("training", "members", 0, "temperature")),
        ("ens", ("ood", "combine")),
        ("ens", ("ood", "n_train_members")),
        ("single", ("ood", "shrinkage")),
        ("single", ("onnx", "input", "dtype")),
        ("adapted", ("adaptation", "base", "sha256")),
        ("with_use", ("intended_use", "purpose")),
    ],
)
def test_a_card_missing_a_typed_field_is_refused_naming_it(name, drop):
    if name == "with_use":
        card = _schema2("single") | {"intended_use": research_use().model_dump()}
    else:
        card = _schema2(name)
    del _section(card, drop[:-1])[drop[-1]]
    named = re.escape(".".join(map(str, drop)))
    with pytest.raises(ModelFileError, match=rf"is missing {named}\b.*Re-export"):
        parse_card(card, "the card")


@pytest.mark.parametrize(
    ("name", "path", "value", "named"),
    [
        ("ens", ("training", "members"), "two", "training.members"),
        ("ens", ("ood", "n_train_members"), [30, "many"], "ood.n_train_members.1"),
        ("single", ("onnx", "opset"), "eighteen", "onnx.opset"),
        ("adapted", ("adaptation", "base", "sha256"), "abc", "adaptation.base.sha256"),
        ("adapted", ("adaptation", "interval", "NORMAL"), [0.1, 0.2, 0.3], "adaptation.interval"),
        ("single", ("intended_use",), {"purpose": "x", "population": "y", "out_of_scope": "z"},
         "intended_use.out_of_scope"),
    ],
)  # fmt: skip
def test_a_mistyped_typed_field_is_refused_naming_it(name, path, value, named):
    card = _schema2(name)
    _section(card, path[:-1])[path[-1]] = value
    with pytest.raises(ModelFileError, match=rf"invalid values \({re.escape(named)}"):
        parse_card(card, "the card")


def test_a_schema_1_export_predicts(tmp_path):
    from pneumo_fastai.inference.predict import load_model

    card = old_export_with_fresh_weights(tmp_path)
    model = load_model(card, device="cpu", precision="fp32")
    pred = model.predict(write_image(tmp_path / "x.png", seed=0))
    assert pred.ok and 0.0 <= pred.probability <= 1.0
    assert model.threshold == pytest.approx(0.47704389691352844)


def test_a_pickle_of_the_old_layout_loads_and_predicts(tmp_path):
    from fastai.learner import load_learner

    image = write_image(tmp_path / "x.png", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn = load_learner(SCHEMA1 / "schema1_tiny.pkl")
        label, _, probs = learn.predict(image)
    assert label in ("NORMAL", "PNEUMONIA") and float(probs.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("broken", ["missing_field", "newer_schema"])
def test_predict_refuses_a_bad_card_with_exit_2_and_no_traceback(tmp_path, broken):
    card = old_export_with_fresh_weights(tmp_path)
    data = json.loads(card.read_text())
    if broken == "missing_field":
        del data["decision_threshold"]
    else:
        data["schema_version"] = CARD_SCHEMA_VERSION + 1
    card.write_text(json.dumps(data))
    image = write_image(tmp_path / "x.png", seed=0)
    result = subprocess.run(
        [sys.executable, "-m", "pneumo_fastai.cli", "predict", str(card), str(image)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    expected = "missing decision_threshold" if broken == "missing_field" else "newer than"
    assert expected in " ".join(result.stderr.split())
