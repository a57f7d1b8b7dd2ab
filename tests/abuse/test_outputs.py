"""What the package writes: odd file names, formula-like names, export names, killed exports,
and the audit's view of the dataset."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from pneumo_fastai.card import ExportPaths, parse_card, read_card, verify_file
from pneumo_fastai.errors import ModelFileError, PneumoError
from pneumo_fastai.training.export import write_export

from ..datatools.test_audit import write_ensemble
from ..helpers.cli import run_main
from ..helpers.data import make_dataset, write_image

SCHEMA1 = Path(__file__).resolve().parents[1] / "fixtures" / "schema1" / "schema1.json"


def _predict(monkeypatch, capsys, card: Path, folder: Path, out: Path) -> int:
    code = run_main(monkeypatch, "predict", card, folder, "--out", out, "--device", "cpu")
    assert "Traceback" not in capsys.readouterr().err
    return code


# Item 10: a file name that is not UTF-8 used to crash the CSV after every image was predicted
def test_a_file_name_that_is_not_utf8_is_written_not_fatal(
    fresh_export, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "scans"
    write_image(folder / os.fsdecode(b"scan-\xff.png"), seed=1, size=(80, 80))
    write_image(folder / "plain.png", seed=2, size=(80, 80))
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"out{suffix}"
        assert _predict(monkeypatch, capsys, fresh_export, folder, out) == 0
        text = out.read_bytes().decode("utf-8")  # strict: valid UTF-8
        if suffix == ".jsonl":
            text = " ".join(json.loads(line)["file"] for line in text.splitlines())
        assert "scan-\\xff.png" in text and "plain.png" in text


# Item 11: names a spreadsheet would run as formulas
FORMULAS = ["=HYPERLINK(1).png", "+1+2.png", "-1+2.png", "@SUM(1).png"]


def test_formula_like_file_names_are_defused_in_csv(fresh_export, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "scans"
    for i, name in enumerate(FORMULAS):
        write_image(folder / name, seed=i, size=(80, 80))
    monkeypatch.chdir(folder)  # relative paths: the file column starts with the name itself
    out = tmp_path / "out.csv"
    assert _predict(monkeypatch, capsys, fresh_export, Path("."), out) == 0
    cells = sorted(row["file"] for row in csv.DictReader(io.StringIO(out.read_text())))
    assert cells == sorted(f"'{name}" for name in FORMULAS)
    lines = tmp_path / "out.jsonl"
    assert _predict(monkeypatch, capsys, fresh_export, Path("."), lines) == 0
    names = sorted(json.loads(x)["file"] for x in lines.read_text().splitlines())
    assert names == sorted(FORMULAS)  # JSON is not a spreadsheet: names as they are


# Item 12: --name must name files, not paths
@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 101, "a b"])
def test_train_refuses_a_name_that_is_not_a_file_name(tmp_path, monkeypatch, capsys, name):
    data = make_dataset(tmp_path / "data", n_normal=2, n_pneumonia=2)
    exports = tmp_path / "exports"
    args = ["train", "--data", data, "--exports", exports, "--name", name, "--epochs", "1"]
    assert run_main(monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert "cannot name an export's files" in err and "Traceback" not in err
    assert not exports.exists() and not (tmp_path / "evil.json").exists()


def test_write_export_refuses_a_name_that_is_not_a_file_name(tmp_path):
    card = parse_card(json.loads(SCHEMA1.read_text()))
    with pytest.raises(PneumoError, match="cannot name an export's files"):
        write_export(ExportPaths.for_name(tmp_path / "x", "../evil"), card, {})
    assert list(tmp_path.rglob("*")) == []


# Item 13: a kill while an export is switched leaves one card whose files match it
class Killed(BaseException):
    """What SIGKILL would do, as far as the files are concerned."""


def _kill_at_the_card(monkeypatch, card: Path) -> None:
    """Make the rename that would put `card` in place fail, as a kill at that moment would."""
    real = os.replace

    def replace(src, dst):
        if Path(dst) == card:
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _writers(tag: bytes) -> dict:
    return {
        kind: (lambda p, k=kind: Path(p).write_bytes(tag + k.encode()))
        for kind in ("weights", "valid")
    }


def test_a_kill_during_an_export_leaves_the_old_export_whole(tmp_path, monkeypatch):
    paths = ExportPaths.for_name(tmp_path, "m")
    card = parse_card(json.loads(SCHEMA1.read_text()))
    write_export(paths, card, _writers(b"old-"))
    with monkeypatch.context() as m:
        _kill_at_the_card(m, paths.card)
        with pytest.raises(Killed):
            write_export(paths, card, _writers(b"new-"))
    kept = read_card(paths.card)
    assert verify_file(kept, paths.card, "weights").read_bytes() == b"old-weights"
    assert verify_file(kept, paths.card, "valid").read_bytes() == b"old-valid"
    write_export(paths, card, _writers(b"new-"))
    done = read_card(paths.card)
    assert verify_file(done, paths.card, "weights").read_bytes() == b"new-weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors", "m.valid.csv"]


@pytest.mark.slow  # two ONNX exports of a ResNet34: minutes on a busy CPU
def test_a_kill_during_export_onnx_leaves_the_onnx_engine_working(export_copy, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime comes with the [onnx] extra")
    from pneumo_fastai.inference.onnx_export import export_onnx
    from pneumo_fastai.inference.predict import load_model

    export_onnx(export_copy)
    before = export_copy.read_text()
    graph = export_copy.with_suffix(".onnx").read_bytes()
    with monkeypatch.context() as m:
        _kill_at_the_card(m, export_copy)
        m.setattr("pneumo_fastai.inference.onnx_export.PARITY_ATOL", 1.0)
        with pytest.raises(Killed):
            export_onnx(export_copy, opset=17)
    card = read_card(export_copy)
    assert verify_file(card, export_copy, "onnx").read_bytes() == graph
    assert json.loads(before)["onnx"] == json.loads(export_copy.read_text())["onnx"]
    load_model(export_copy, engine="onnx")  # checks the graph's sha256 against the card


# Item 6: the audit's contact sheet shows only the dataset's own images
def test_the_audit_refuses_names_outside_the_dataset(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cleanlab", reason="data audit needs the [audit] extra")
    root = make_dataset(tmp_path / "chest_xray", n_normal=4, n_pneumonia=4)
    private = write_image(tmp_path / "private" / "someone.png", seed=9, size=(80, 80))
    rows = [(str(p.relative_to(root)), p.parent.name, 0.5) for p in sorted(root.rglob("*.jpeg"))]
    rows[0] = (os.path.relpath(private, root), "NORMAL", 0.99)
    card = write_ensemble(tmp_path / "exports", root, rows)
    out = tmp_path / "audit"
    assert run_main(monkeypatch, "data", "audit", card, "--out", out) == 2
    err = capsys.readouterr().err
    assert "not a path inside the dataset folder" in err and "Traceback" not in err
    assert not out.exists()
    rows[0] = (str(private), "NORMAL", 0.99)
    shutil.rmtree(tmp_path / "exports")
    card = write_ensemble(tmp_path / "exports", root, rows)
    with pytest.raises(ModelFileError, match="not a path inside the dataset folder"):
        from pneumo_fastai.datatools.audit import read_out_of_fold

        read_out_of_fold(card)
