"""`read_valid`: the validation predictions it accepts, and each kind of file it refuses."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pneumo_fastai.card import parse_card
from pneumo_fastai.errors import ModelFileError
from pneumo_fastai.fileio import sha256_file
from pneumo_fastai.valid_csv import ValidTable, read_valid

SCHEMA1 = Path(__file__).parent / "fixtures" / "schema1"
SINGLE = Path(__file__).parent / "fixtures" / "schema2" / "single.json"
HEADER = ("file", "label", "probability", "ood_score")
ROWS = [
    ("train/NORMAL/a.jpeg", "NORMAL", 0.25, 3.5),
    ("train/PNEUMONIA/b.jpeg", "PNEUMONIA", 1.0, 0.0),
]


def _export(folder: Path, rows, header=HEADER):
    """A copy of the schema-2 card whose valid file is `rows` under `header`, sha256 recorded."""
    valid = folder / "single.valid.csv"
    with open(valid, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    data = json.loads(SINGLE.read_text())
    data["files"]["valid"]["sha256"] = sha256_file(valid)
    return parse_card(data), folder / "single.json"


def test_a_valid_file_reads_as_columns(tmp_path):
    valid = read_valid(*_export(tmp_path, ROWS))
    assert valid.files == ["train/NORMAL/a.jpeg", "train/PNEUMONIA/b.jpeg"]
    assert valid.labels == ["NORMAL", "PNEUMONIA"] and valid.y.tolist() == [0, 1]
    assert valid.probability.tolist() == [0.25, 1.0] and valid.ood_score.tolist() == [3.5, 0.0]
    assert valid.rows() == [tuple(r) for r in ROWS]


def test_without_an_ood_column_the_scores_are_none(tmp_path):
    valid = read_valid(*_export(tmp_path, [r[:3] for r in ROWS], HEADER[:3]))
    assert valid.ood_score is None and valid.rows() == [r[:3] for r in ROWS]


def test_the_0_1_0_export_s_valid_file_reads():
    from pneumo_fastai.card import read_card

    card = read_card(SCHEMA1 / "schema1.json")
    valid = read_valid(card, SCHEMA1 / "schema1.json")
    assert len(valid.files) == len(valid.probability) > 0 and valid.ood_score is None


@pytest.mark.parametrize(
    ("rows", "header", "said"),
    [
        ([], HEADER, "has no rows"),
        (ROWS, ("file", "label", "prob"), "has the columns"),
        ([ROWS[0][:3]], HEADER, "a row of the wrong length"),
        ([("a", "VIRUS", 0.5, 1.0)], HEADER, "the labels ['VIRUS']"),
        ([("", "NORMAL", 0.5, 1.0)], HEADER, "a row without a file name"),
        ([("a", "NORMAL", 1.5, 1.0)], HEADER, "column probability has 1 value(s) outside 0..1"),
        ([("a", "NORMAL", math.nan, 1.0)], HEADER, "column probability has 1 value(s)"),
        ([("a", "NORMAL", "high", 1.0)], HEADER, "column probability holds a non-number"),
        ([("a", "NORMAL", 0.5, -1.0)], HEADER, "column ood_score has 1 value(s) outside 0..inf"),
        ([("a", "NORMAL", 0.5, math.inf)], HEADER, "column ood_score has 1 value(s)"),
    ],
    ids=["empty", "columns", "short-row", "label", "no-file", "range", "nan", "text", "neg", "inf"],
)
def test_a_wrong_file_is_refused_with_what_is_wrong(tmp_path, rows, header, said):
    with pytest.raises(ModelFileError, match=r"single\.valid\.csv") as info:
        read_valid(*_export(tmp_path, rows, header))
    assert said in str(info.value) and "Re-export" in str(info.value)


def test_a_file_that_does_not_match_the_card_is_refused_before_it_is_read(tmp_path):
    card, path = _export(tmp_path, ROWS)
    (tmp_path / "single.valid.csv").write_text("not,a,table\n")
    with pytest.raises(ModelFileError, match="does not match its model card"):
        read_valid(card, path)
    (tmp_path / "single.valid.csv").unlink()
    with pytest.raises(ModelFileError, match="is missing"):
        read_valid(card, path)


def test_a_card_without_validation_predictions_says_so(tmp_path):
    card, path = _export(tmp_path, ROWS)
    card = card.model_copy(update={"files": {k: v for k, v in card.files.items() if k != "valid"}})
    with pytest.raises(ModelFileError, match="lists no validation predictions"):
        read_valid(card, path)


def test_sorted_orders_every_column_by_file():
    table = ValidTable(
        ["b", "a"], ["PNEUMONIA", "NORMAL"], np.array([0.9, 0.1]), np.array([2.0, 1.0])
    )
    ordered = table.sorted()
    assert ordered.rows() == [("a", "NORMAL", 0.1, 1.0), ("b", "PNEUMONIA", 0.9, 2.0)]
