"""Crafted model cards: nonsense values and files outside the export are refused before use.

Each test goes through `pneumo-fastai predict` as a user would: exit status 2, one message that
names what is wrong, and no prediction file written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from pneumo_fastai.card import parse_card
from pneumo_fastai.errors import ModelFileError
from pneumo_fastai.fileio import sha256_file

from ..helpers.cli import run_main
from ..helpers.data import write_image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _edit(card_path: Path, change) -> Path:
    """Rewrite the card at `card_path` after `change(data)` (NaN allowed, as json writes it)."""
    data = json.loads(card_path.read_text())
    change(data)
    card_path.write_text(json.dumps(data))
    return card_path


def _refused(monkeypatch, capsys, card: Path, tmp_path: Path, *expected: str) -> str:
    """`predict CARD IMAGE --out OUT` exits 2 naming `expected`, and writes no OUT."""
    image = write_image(tmp_path / "scan.png", seed=1, size=(80, 80))
    out = tmp_path / "out.csv"
    code = run_main(monkeypatch, "predict", card, image, "--out", out, "--device", "cpu")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    return err


# Item 1: a card whose adaptation estimated one class is refused (shares bounded away from 0, 1)
@pytest.mark.parametrize(
    "target", [{"NORMAL": 1.0, "PNEUMONIA": 0.0}, {"NORMAL": 0.999, "PNEUMONIA": 0.001}]
)
def test_an_adaptation_to_one_class_does_not_load(
    export_copy, tmp_path, monkeypatch, capsys, target
):
    adapted = json.loads((FIXTURES / "schema2" / "adapted.json").read_text())["adaptation"]
    adapted["target"] = target
    adapted["raw_threshold"] = 1.0
    _edit(export_copy, lambda d: d.update(adaptation=adapted))
    _refused(monkeypatch, capsys, export_copy, tmp_path, "adaptation.target", "invalid values")


# Item 2: nonsense that used to load
@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("decision_threshold.value", lambda d: d["decision_threshold"].update(value=0.0)),
        ("decision_threshold.value", lambda d: d["decision_threshold"].update(value=math.nan)),
        ("ood.threshold", lambda d: d.update(ood=_ood(math.nan))),
        ("ood.threshold", lambda d: d.update(ood=_ood(1e308))),
        ("input.size", lambda d: d["input"].update(size=100_000)),
        ("input.normalize.std", lambda d: d["input"]["normalize"].update(std=[0.0, 0.0, 0.0])),
        ("positive_class", lambda d: d.update(positive_class="VIRUS")),
    ],
)  # fmt: skip
def test_a_card_that_makes_no_sense_does_not_load(
    export_copy, tmp_path, monkeypatch, capsys, field, change
):
    _edit(export_copy, change)
    err = _refused(monkeypatch, capsys, export_copy, tmp_path, "invalid values")
    assert field.split(".")[0] in err


def _ood(threshold: float) -> dict:
    ood = json.loads((FIXTURES / "schema2" / "single.json").read_text())["ood"]
    return ood | {"threshold": threshold}


# Item 4: files outside the export's folder
def _outside_weights(export: Path, outside: Path) -> str:
    """Copy the export's weights to `outside` and point the card there (matching sha256)."""
    outside.mkdir(parents=True, exist_ok=True)
    target = shutil.copy(export.parent / "schema1.pth", outside / "w.pth")
    return os.path.relpath(target, export.parent)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_card_naming_a_file_outside_its_folder_is_refused(
    export_copy, tmp_path, monkeypatch, capsys, how
):
    outside = tmp_path / "elsewhere"
    name = _outside_weights(export_copy, outside)
    if how == "absolute":
        name = str((export_copy.parent / name).resolve())
    if how == "symlink":
        (export_copy.parent / "link.pth").symlink_to(export_copy.parent / name)
        name = "link.pth"
    _edit(export_copy, lambda d: d["files"]["weights"].update(name=name))
    _refused(monkeypatch, capsys, export_copy, tmp_path / "run", "outside the export's folder")


def test_a_mismatch_does_not_print_the_hash_of_a_file_it_names(
    export_copy, tmp_path, monkeypatch, capsys
):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours to hash")
    name = os.path.relpath(secret, export_copy.parent)
    _edit(export_copy, lambda d: d["files"]["weights"].update(name=name))
    err = _refused(monkeypatch, capsys, export_copy, tmp_path / "run", "outside")
    assert sha256_file(secret)[:12] not in err
    export_copy.parent.joinpath("schema1.pth").write_bytes(b"tampered")
    _edit(export_copy, lambda d: d["files"]["weights"].update(name="schema1.pth"))
    err = _refused(monkeypatch, capsys, export_copy, tmp_path / "run2", "does not match")
    assert sha256_file(export_copy.parent / "schema1.pth")[:12] not in err


def _ensemble(folder: Path, members: list[str]) -> Path:
    """An ensemble card in `folder` whose members are the cards at `members` (relative names)."""
    data = json.loads((FIXTURES / "schema2" / "ens.json").read_text())
    for member, name in zip(data["members"], members, strict=True):
        member["card"] = name
        member["sha256"] = sha256_file(folder / name)
    card = folder / "ens.json"
    card.write_text(json.dumps(data))
    return card


@pytest.mark.parametrize("layout", ["outside", "twice"])
def test_an_ensemble_member_outside_its_folder_or_listed_twice_is_refused(
    export_copy, tmp_path, monkeypatch, capsys, layout
):
    from pneumo_fastai.inference.members import member_cards

    folder = tmp_path / "ens"
    folder.mkdir()
    if layout == "outside":
        members = [os.path.relpath(export_copy, folder)] * 1 + ["m1.json"]
        shutil.copy(export_copy, folder / "m1.json")
        expected = "outside the export's folder"
    else:
        shutil.copy(export_copy, folder / "m0.json")
        members, expected = ["m0.json", "./m0.json"], "twice"
    card = _ensemble(folder, members)
    with pytest.raises(ModelFileError, match=expected):
        member_cards(parse_card(json.loads(card.read_text())), card)
    _refused(monkeypatch, capsys, card, tmp_path / "run", expected)
