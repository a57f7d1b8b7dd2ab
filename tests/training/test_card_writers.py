"""The cards training writes: typed, one header, `files` filled in when written, read back as is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from pneumo_fastai.card import (
    CARD_SCHEMA_VERSION,
    EnsembleTraining,
    ExportPaths,
    ModelCard,
    parse_card,
    read_card,
    research_use,
)
from pneumo_fastai.config import TrainConfig
from pneumo_fastai.fileio import sha256_file
from pneumo_fastai.inference.ood_check import COMBINED
from pneumo_fastai.training.ensemble import build_ensemble_card, write_ensemble
from pneumo_fastai.training.export import card_header, input_spec, write_export
from pneumo_fastai.valid_csv import ValidTable, read_valid

SCHEMA2 = Path(__file__).parents[1] / "fixtures" / "schema2"


def _single() -> ModelCard:
    """A schema-2 single-model card (with an OOD check) as `build_card` leaves it: no files."""
    card = parse_card(json.loads((SCHEMA2 / "single.json").read_text()))
    return card.model_copy(update={"files": {}})


def _loose(model: object, where: str = "card") -> list[str]:
    """Where a section holds keys its type does not declare."""
    if isinstance(model, BaseModel):
        found = [f"{where}: {sorted(model.model_extra)}"] if model.model_extra else []
        for name in type(model).model_fields:
            found += _loose(getattr(model, name), f"{where}.{name}")
        return found
    if isinstance(model, dict):
        return [hit for k, v in model.items() for hit in _loose(v, f"{where}.{k}")]
    if isinstance(model, list):
        return [hit for i, v in enumerate(model) for hit in _loose(v, f"{where}.{i}")]
    return []


def test_the_header_holds_the_schema_the_input_contract_and_the_intended_use(tmp_path):
    config = TrainConfig(data=tmp_path, size=48, crop_margin=0.05, name="x", task="subtype")
    header = card_header(config, input_spec(config))
    assert header["schema_version"] == CARD_SCHEMA_VERSION and header["name"] == "x"
    assert header["intended_use"] == research_use()
    assert header["classes"] == ["NORMAL", "BACTERIA", "VIRUS"] and header["task"] == "subtype"
    assert header["positive_class"] == "PNEUMONIA" and header["config"] == config.to_dict()
    spec = header["input"]
    assert spec.size == 48 and spec.preprocessing == {
        "size": 48, "crop_margin": 0.05, "equalize": "none"
    }  # fmt: skip


def test_write_export_fills_in_the_files_it_wrote_and_the_json_reads_back_as_is(tmp_path):
    card = _single()
    paths = ExportPaths.for_name(tmp_path, "x")
    writers = {"valid": lambda p: p.write_text("v"), "history": lambda p: p.write_text("h")}
    written = write_export(paths, card, writers)
    assert card.files == {}, "the card given is left as it was"
    assert {k: e.name for k, e in written.files.items()} == {
        "valid": "x.valid.csv", "history": "x.history.csv"
    }  # fmt: skip
    assert written.files["valid"].sha256 == sha256_file(paths.valid)
    assert read_card(paths.card) == written
    assert json.loads(paths.card.read_text()) == json.loads(written.to_json())
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_the_ensemble_card_is_built_typed_from_its_members_with_the_shared_header(tmp_path):
    members = []
    for k in range(2):
        card = _single().model_copy(update={"name": f"ens-fold{k}"})
        path = tmp_path / "ens.members" / f"ens-fold{k}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(card.to_json())
        members.append((card, path))
    cards, member_paths = [c for c, _ in members], [p for _, p in members]
    classes = ["NORMAL", "PNEUMONIA"] * 20
    pooled = ValidTable(
        [f"train/{cls}/{cls.lower()}{i}.jpeg" for i, cls in enumerate(classes)],
        classes,
        np.array([0.2 + 0.6 * (cls != "NORMAL") for cls in classes]),
        np.array([0.5 + i / 40 for i in range(len(classes))]),
    )
    config = TrainConfig(data=tmp_path, folds=2, name="ens", exports=tmp_path, size=32)
    card_path = tmp_path / "ens.json"
    card = build_ensemble_card(config, cards, member_paths, card_path, pooled)
    assert card.files == {} and card.kind == "ensemble"
    header = card_header(config, cards[0].input)
    assert {k: getattr(card, k) for k in header if k != "created"} == {
        k: v for k, v in header.items() if k != "created"
    }
    assert isinstance(card.training, EnsembleTraining)
    assert [(m.name, m.temperature) for m in card.training.members] == [
        (c.name, c.temperature) for c in cards
    ]
    assert card.ood.combine == COMBINED
    assert card.ood.n_train_members == [c.ood.n_train for c in cards]
    written = write_ensemble(card_path, card, pooled)
    assert written.files["valid"].sha256 == sha256_file(tmp_path / "ens.valid.csv")
    assert read_card(card_path) == written and _loose(written) == []
    assert read_valid(written, card_path).rows() == pooled.rows()


def test_a_trained_card_is_typed_throughout_and_its_json_round_trips(real_export):
    data = json.loads(real_export.read_text())
    card = read_card(real_export)
    assert data["intended_use"] == research_use().model_dump()
    assert json.loads(card.to_json()) == data
    assert _loose(card) == []
