"""`predict.py`, `classifier.py` and `pneumo-fastai predict` on a tiny synthetic-X-ray export."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import pneumo_fastai
from pneumo_fastai.cli import app
from pneumo_fastai.errors import ModelFileError
from pneumo_fastai.inference import classifier
from pneumo_fastai.inference.predict import XrayClassifier, load_model
from pneumo_fastai.inference.results import OUTPUT_COLUMNS, Prediction

from ..helpers.cli import run_main

pytestmark = pytest.mark.usefixtures("single_thread")  # `tiny_export` makes them slow


@pytest.fixture(scope="session")
def export(tiny_export: Path) -> Path:
    """Model card of the session's tiny binary export (1 epoch, 64 px, from scratch)."""
    return tiny_export


@pytest.fixture(scope="session")
def model(export: Path) -> XrayClassifier:
    return load_model(export, device="cpu")


def test_every_input_kind_is_predicted_as_the_reference_loader_would(
    model: XrayClassifier, kinds: list[Path]
) -> None:
    preds = model.predict_batch(kinds, bs=4)
    assert [p.file for p in preds] == [str(f) for f in kinds]
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok]
    probs = np.array([p.probability for p in preds])
    assert ((probs >= 0) & (probs <= 1)).all()
    # decoding once ourselves gives exactly what the export's own file loader gives
    exported = model.exported
    reference = exported.probabilities(exported.dataloader(kinds, bs=4, num_workers=0))
    np.testing.assert_allclose(probs, reference, atol=1e-6)
    negative, positive = model.classes
    for p in preds:
        assert p.threshold == model.threshold
        assert p.label == (positive if p.probability >= model.threshold else negative)
        assert p.label_argmax == (positive if p.probability >= 0.5 else negative)


def test_unreadable_files_get_error_rows_and_the_rest_are_predicted(
    model: XrayClassifier, kinds: list[Path], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    empty = tmp_path / "empty.jpeg"
    empty.touch()
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(kinds[0].read_bytes()[:300])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    missing = tmp_path / "gone.png"
    bad = [corrupt, empty, truncated, text, missing]
    items = [kinds[0], *bad[:3], kinds[1], *bad[3:], kinds[2]]

    preds = model.predict_batch(items, bs=2)

    assert [p.file for p in preds] == [str(f) for f in items]
    by_file = {p.file: p for p in preds}
    for f in bad:
        p = by_file[str(f)]
        assert not p.ok and p.error
        assert (p.probability, p.label, p.label_argmax) == (None, None, None)
        assert str(f) not in p.error  # the file column already names it
    assert "empty" in by_file[str(empty)].error
    assert "truncated" in by_file[str(truncated)].error.lower()
    good = [by_file[str(f)].probability for f in kinds[:3]]
    alone = [p.probability for p in model.predict_batch(kinds[:3])]
    np.testing.assert_allclose(good, alone, atol=1e-6)


def test_chunks_keep_order_across_batch_sizes(
    model: XrayClassifier, kinds: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaders = []
    dataloader = model.exported.dataloader
    monkeypatch.setattr(
        model.exported, "dataloader", lambda *a, **k: loaders.append(a) or dataloader(*a, **k)
    )
    monkeypatch.setattr(classifier, "MIN_CHUNK", 1)
    items = [*kinds, Path("missing.png"), *kinds]  # 19 items: 3 chunks of 8 batches of 1

    small = model.predict_batch(items, bs=1)
    assert [len(images) for (images,) in loaders] == [8, 7, 3]  # "missing.png" is in chunk 2
    large = model.predict_batch(items, bs=64)

    assert [p.file for p in small] == [p.file for p in large] == [str(f) for f in items]
    assert (
        [p.ok for p in small] == [p.ok for p in large] == [f.name != "missing.png" for f in items]
    )
    a = np.array([p.probability for p in small if p.ok])
    b = np.array([p.probability for p in large if p.ok])
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a[: len(kinds)], a[len(kinds) :], atol=1e-6)


def test_predict_one_file_and_in_memory_images(model: XrayClassifier, kinds: list[Path]) -> None:
    from_file = model.predict(kinds[1])  # gray8.png
    assert isinstance(from_file, Prediction) and from_file.ok
    assert from_file.file == str(kinds[1])
    in_memory = model.predict(Image.open(kinds[1]))
    assert in_memory.file is None
    assert in_memory.probability == pytest.approx(from_file.probability, abs=1e-6)
    rgba = model.predict(Image.open(kinds[4]))  # transparency composited like load_xray does
    assert rgba.probability == pytest.approx(model.predict(kinds[4]).probability, abs=1e-6)
    deep = model.predict(Image.open(kinds[2]))  # 16-bit: windowed, not clipped at 255
    assert deep.probability == pytest.approx(model.predict(kinds[2]).probability, abs=1e-6)


def test_tta_gives_probabilities(model: XrayClassifier, kinds: list[Path]) -> None:
    preds = model.predict_batch(kinds[:3], tta=True)
    probs = np.array([p.probability for p in preds])
    assert all(p.ok for p in preds) and ((probs >= 0) & (probs <= 1)).all()


def test_weights_and_pickle_paths_agree(
    export: Path, model: XrayClassifier, kinds: list[Path]
) -> None:
    pickled = load_model(export, trust_pickle=True, device="cpu")
    assert pickled.exported.from_pickle and not model.exported.from_pickle
    safe = [p.probability for p in model.predict_batch(kinds, bs=4)]
    from_pickle = [p.probability for p in pickled.predict_batch(kinds, bs=4)]
    np.testing.assert_allclose(safe, from_pickle, atol=1e-5)
    assert pickled.threshold == model.threshold


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("suffix", "trust_pickle"), [(".safetensors", False), (".pkl", True)])
def test_a_modified_model_file_is_refused(
    export: Path, tmp_path: Path, suffix: str, trust_pickle: bool
) -> None:
    card = shutil.copy(export, tmp_path / export.name)
    ood = export.with_name(f"{export.stem}.ood.safetensors")
    shutil.copy(ood, tmp_path / ood.name)  # the OOD check's statistics, checked too
    target = Path(shutil.copy(export.with_suffix(suffix), tmp_path / f"{export.stem}{suffix}"))
    load_model(card, trust_pickle=trust_pickle, device="cpu")  # the intact copy loads
    flip_one_byte(target)
    with pytest.raises(ModelFileError, match="does not match its model card"):
        load_model(card, trust_pickle=trust_pickle, device="cpu")


def invoke(*args: str):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cli_writes_one_row_per_input_and_exits_0(
    export: Path, kinds: list[Path], tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"preds{suffix}"
    folder = kinds[0].parent
    result = invoke(export, folder, "--out", out, "--bs", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        assert tuple(reader.fieldnames) == OUTPUT_COLUMNS
        rows = list(reader)
    else:
        rows = [json.loads(line) for line in text.splitlines()]
        assert all(tuple(r) == OUTPUT_COLUMNS for r in rows)
    assert sorted(r["file"] for r in rows) == sorted(str(f) for f in kinds)
    for r in rows:
        assert 0 <= float(r["probability"]) <= 1
        assert r["prediction"] in pneumo_fastai.CLASSES
        assert r["prediction_argmax"] in pneumo_fastai.CLASSES
        assert r["error"] in ("", None)
    assert "could not be read" in result.output and kinds[0].name in result.output


def test_cli_exits_1_when_a_file_fails_and_still_writes_the_others(
    export: Path, kinds: list[Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    out = tmp_path / "preds.csv"
    result = invoke(export, kinds[0], empty, f"{kinds[0].parent}/*.tif", "--out", out)
    assert result.exit_code == 1, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == [str(kinds[0]), str(empty), str(kinds[6])]
    assert [bool(r["error"]) for r in rows] == [False, True, False]
    assert rows[1]["probability"] == "" and "empty" in rows[1]["error"]


def test_cli_user_errors_exit_2_without_traceback(
    export: Path,
    kinds: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_main(monkeypatch, "predict", tmp_path / "missing.json", kinds[0]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "not found" in err and "Traceback" not in err
    assert run_main(monkeypatch, "predict", export, kinds[0], "--out", tmp_path / "preds.xlsx") == 2
    assert ".csv" in capsys.readouterr().err
    assert run_main(monkeypatch, "predict", export, tmp_path / "no-such-scan.png") == 2
    assert "no-such-scan.png" in capsys.readouterr().err
    assert not (tmp_path / "preds.xlsx").exists()
