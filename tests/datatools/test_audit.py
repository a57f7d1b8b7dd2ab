"""`data audit`: cleanlab on a folds ensemble's out-of-fold predictions, its table and sheet.

Most tests write the ensemble's card and pooled predictions by hand (the audit reads nothing
else of an export), so that a few labels can be planted wrong with confident out-of-fold
probabilities; one slow test audits the session's real 2-fold ensemble (`ensemble_config`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pneumo_fastai.card import parse_card
from pneumo_fastai.cli.data import data_app
from pneumo_fastai.config import SUBTYPES
from pneumo_fastai.data.layout import discover, relative_name
from pneumo_fastai.data.names import label_of, subtype_of
from pneumo_fastai.datatools.audit import COLUMNS, ISSUES_CSV, SHEET_PNG, audit_ensemble
from pneumo_fastai.errors import PneumoError
from pneumo_fastai.fileio import sha256_file

from ..helpers.cli import run_main
from ..helpers.data import make_dataset

runner = CliRunner()
SCHEMA1 = Path(__file__).parents[1] / "fixtures" / "schema1" / "schema1.json"
# out-of-fold P(PNEUMONIA) planted against the folder label, and the order cleanlab must rank
PLANTED = {
    "train/PNEUMONIA/person2_bacteria_1.jpeg": 0.005,
    "train/NORMAL/IM-0003-0002.jpeg": 0.99,
    "train/PNEUMONIA/person7_virus_2.jpeg": 0.02,
    "train/NORMAL/IM-0001-0001.jpeg": 0.97,
}


def _pooled(root: Path, label=label_of) -> list[tuple[str, str, float]]:
    """Every training image once, with a plausible out-of-fold probability, and the planted."""
    rows = []
    for i, f in enumerate(discover(root).files):
        name = relative_name(f, root)
        right = 0.15 + 0.1 * (i % 4)  # 0.15 .. 0.45 from the truth
        p = right if label_of(f) == "NORMAL" else 1 - right
        rows.append((name, label(f), PLANTED.get(name, p)))
    return rows


def write_ensemble(
    folder: Path, root: Path, rows: list[tuple], method: str = "folds", task: str = "binary"
) -> Path:
    """An ensemble card (validated) and its pooled predictions, as training writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    valid = folder / "ens.valid.csv"
    with open(valid, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "probability"])
        writer.writerows((name, label, repr(p)) for name, label, p in rows)
    base = json.loads(SCHEMA1.read_text())
    classes = list(SUBTYPES) if task == "subtype" else base["classes"]
    common = ("input", "config", "validation", "decision_threshold", "versions")
    card = {k: base[k] for k in common} | {
        "schema_version": 2, "kind": "ensemble", "task": task, "name": "ens",
        "created": "2025-01-01T00:00:00+00:00", "classes": classes, "positive_class": "PNEUMONIA",
        "members": [
            {"name": f"ens-fold{k}", "card": f"ens.members/ens-fold{k}.json", "sha256": "0" * 64,
             "files": {}}
            for k in range(2)
        ],
        "data": {"root": str(root), "method": method, "k": 2, "n_valid": len(rows),
                 "valid_counts": {}, "valid_fingerprint": "0" * 16},
        "training": {"seconds": 0.0, "members": []}, "combine": "mean", "files": {
            "valid": {"name": valid.name, "sha256": sha256_file(valid)}
        },
    }  # fmt: skip
    path = folder / "ens.json"
    path.write_text(parse_card(card, "the test card").to_json())
    return path


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def exported(tmp_path) -> tuple[Path, Path]:
    """(ensemble card, dataset root) with four planted label errors."""
    root = make_dataset(tmp_path / "chest_xray")
    return write_ensemble(tmp_path / "exports", root, _pooled(root)), root


def test_the_planted_label_errors_are_flagged_and_ranked_first(exported, tmp_path):
    card, _ = exported
    result = runner.invoke(data_app, ["audit", str(card), "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    rows = _read(tmp_path / "audit" / ISSUES_CSV)
    assert [r["file"] for r in rows[: len(PLANTED)]] == list(PLANTED)
    assert {r["file"] for r in rows if r["suspect"] == "True"} == set(PLANTED)
    quality = [float(r["quality"]) for r in rows]
    assert quality == sorted(quality) and 0 <= quality[0] < quality[-1] <= 1
    assert rows[0]["label"] == "PNEUMONIA" and float(rows[0]["probability"]) == 0.005
    words = " ".join(result.output.split())
    assert "NORMAL 12 2 16.7%" in words.replace("│", "").replace("  ", " ")
    assert f"top {len(PLANTED)} suspects" in words and SHEET_PNG in words


def test_every_training_image_appears_once_with_the_columns(exported, tmp_path):
    card, root = exported
    audit = audit_ensemble(card, tmp_path / "audit")
    with open(audit.csv, newline="") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    rows = _read(audit.csv)
    every = sorted(relative_name(f, root) for f in discover(root).files)
    assert sorted(r["file"] for r in rows) == every
    assert all(r["label"] == label_of(root / r["file"]) for r in rows)
    assert audit.counts() == {"NORMAL": (2, 12), "PNEUMONIA": (2, 24)}


def test_the_contact_sheet_is_a_png_of_the_suspects(exported, tmp_path):
    card, _ = exported
    audit = audit_ensemble(card, tmp_path / "audit", top=3)
    assert audit.shown == 3 and audit.missing == []
    with Image.open(audit.sheet) as img:
        assert img.format == "PNG"
        assert 600 <= img.width <= 3000 and 300 <= img.height <= 2000
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 20, "the tiles show images, not a blank sheet"
    assert not list(audit.sheet.parent.glob(".*.tmp")), "no temporary file left behind"


def test_a_missing_image_gets_a_missing_tile_and_is_named(exported, tmp_path):
    card, root = exported
    gone = next(iter(PLANTED))
    (root / gone).unlink()
    result = runner.invoke(data_app, ["audit", str(card), "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())
    assert f"Not found under {root}, 1 of the sheet's images" in words and gone in words
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    audit = audit_ensemble(card, tmp_path / "audit", data=moved)
    assert audit.missing == [gone] and audit.oof.root == moved


def test_a_subtype_ensemble_is_audited_on_its_binary_decision(tmp_path):
    root = make_dataset(tmp_path / "chest_xray")
    card = write_ensemble(tmp_path / "exports", root, _pooled(root, subtype_of), task="subtype")
    result = runner.invoke(data_app, ["audit", str(card), "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert "Subtype ensemble: audited on NORMAL against PNEUMONIA" in " ".join(
        result.output.split()
    )
    rows = _read(tmp_path / "audit" / ISSUES_CSV)
    assert {r["file"] for r in rows if r["suspect"] == "True"} == set(PLANTED)
    assert [r["label"] for r in rows[:2]] == ["BACTERIA", "NORMAL"]


def test_clean_labels_flag_nothing_and_the_sheet_says_so(tmp_path):
    root = make_dataset(tmp_path / "chest_xray")
    rows = [(f, label, p) for f, label, p in _pooled(root) if f not in PLANTED]
    audit = audit_ensemble(write_ensemble(tmp_path / "exports", root, rows), tmp_path / "audit")
    assert audit.shown == 0 and not audit.suspect.any() and audit.sheet.is_file()
    assert {r["suspect"] for r in _read(audit.csv)} == {"False"} and len(audit.oof.files) == 32
    with pytest.raises(PneumoError, match="--top must be at least 1"):
        audit_ensemble(audit.csv.parent.parent / "exports" / "ens.json", tmp_path / "x", top=0)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumo_fastai.cli", "data", "audit", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def _seeds(card: Path) -> None:
    data = json.loads(card.read_text())
    data["data"]["method"] = "seeds"
    card.write_text(json.dumps(data))


def _tamper(card: Path) -> None:
    valid = card.with_suffix(".valid.csv")
    valid.write_text(valid.read_text().replace("0.005", "0.995"))


def _single(card: Path) -> None:
    shutil.copy(SCHEMA1, card)


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (_single, "is a single model's card, not an ensemble"),
        (_seeds, "is a --seeds ensemble: its pooled predictions are the members' mean"),
        (lambda card: card.with_suffix(".valid.csv").unlink(), "ens.valid.csv is missing"),
        (_tamper, "ens.valid.csv does not match its model card"),
        (lambda card: card.write_text('{"hello": 1}'), "not a pneumo-fastai model card"),
        (lambda card: card.unlink(), "ens.json not found"),
    ],
    ids=["single", "seeds", "no-valid", "tampered", "not-a-card", "no-card"],
)
def test_bad_input_is_one_message_and_exit_2(exported, tmp_path, spoil, said, monkeypatch, capsys):
    card, _ = exported
    spoil(card)
    code = run_main(monkeypatch, "data", "audit", card, "--out", tmp_path / "audit")
    err = capsys.readouterr().err
    assert code == 2, err
    assert said in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "audit").exists(), "nothing written"


def test_without_cleanlab_the_command_names_the_extra(exported, tmp_path):
    card, _ = exported
    shadow = tmp_path / "shadow" / "cleanlab"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'cleanlab'\", name='cleanlab')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    result = _cli(str(card), "--out", str(tmp_path / "audit"), env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install -e '.[audit]'" in " ".join(result.stderr.split())


def test_help_imports_neither_cleanlab_nor_matplotlib_nor_torch():
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pneumo_fastai.cli import app\n"
        "result = CliRunner().invoke(app, ['data', 'audit', '--help'])\n"
        "assert result.exit_code == 0 and '--out' in result.output, result.output\n"
        "print(sorted({'cleanlab', 'matplotlib', 'sklearn', 'torch'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_real_folds_ensemble_is_audited_end_to_end(trained, ensemble_config, tmp_path):
    ensemble = trained(ensemble_config).result
    root = ensemble_config.data
    audit = audit_ensemble(ensemble.card_path, tmp_path / "audit")
    rows = _read(audit.csv)
    every = sorted(relative_name(f, root) for f in discover(root).files)
    assert sorted(r["file"] for r in rows) == every
    pooled = {r["file"]: r for r in _read(ensemble.card_path.with_suffix(".valid.csv"))}
    for r in rows:
        assert float(r["probability"]) == float(pooled[r["file"]]["probability"])
        assert r["label"] == pooled[r["file"]]["label"] and r["suspect"] in {"True", "False"}
    assert audit.shown == int(audit.suspect.sum()) == sum(r["suspect"] == "True" for r in rows)
    assert audit.sheet.is_file()
