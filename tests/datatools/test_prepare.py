"""`prepare_dataset`: sizes, manifest, resumability, and a result `discover` accepts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_fastai.data.layout import discover
from pneumo_fastai.datatools.prepare import MANIFEST, SETTINGS, default_out, prepare_dataset
from pneumo_fastai.errors import DataError

SIZE = 64
# source relative path -> (source width, height, PIL mode, format), and expected output size
SOURCES = {
    "train/NORMAL/IM-0001-0001.jpeg": ((120, 90, "L", "JPEG"), (85, 64)),
    "train/NORMAL/IM-0002-0001.png": ((90, 150, "I;16", "PNG"), (64, 107)),
    "train/PNEUMONIA/person1_bacteria_1.jpeg": ((100, 100, "RGB", "JPEG"), (64, 64)),
    "train/PNEUMONIA/person2_virus_2.jpg": ((50, 40, "L", "JPEG"), (50, 40)),  # not enlarged
    "val/NORMAL/IM-0003-0001.jpeg": ((80, 70, "L", "JPEG"), (73, 64)),
    "val/PNEUMONIA/person3_bacteria_3.jpeg": ((70, 80, "L", "JPEG"), (64, 73)),
    "test/NORMAL/IM-0004-0001.jpeg": ((96, 96, "L", "JPEG"), (64, 64)),
    "test/PNEUMONIA/person4_virus_4.jpeg": ((96, 128, "L", "JPEG"), (64, 85)),
}


def _write(path: Path, width: int, height: int, mode: str, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(width * height)
    if mode == "I;16":
        img = Image.fromarray(rng.randint(0, 4096, (height, width)).astype(np.uint16))
    elif mode == "RGB":
        img = Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))
    else:
        img = Image.fromarray(rng.randint(0, 256, (height, width), dtype=np.uint8), mode="L")
    img.save(path, format=fmt)


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "chest_xray"
    for rel, ((w, h, mode, fmt), _) in SOURCES.items():
        _write(root / rel, w, h, mode, fmt)
    (root / "train" / "NORMAL" / "IM-0009-0001.jpeg").write_bytes(b"")  # unreadable
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (root / "CITATION.txt").write_text("Kermany et al.")
    return root


def _out_rel(rel: str) -> str:
    return str(Path(rel).with_suffix(".png").as_posix())


def test_prepare_resizes_records_and_skips_done_work(source, tmp_path):
    out = tmp_path / "prepared"
    stats = prepare_dataset(source, size=SIZE, out=out, workers=1, progress=False)
    assert (stats.total, stats.converted, stats.skipped) == (9, 8, 0)
    assert [Path(f).name for f, _ in stats.failed] == ["IM-0009-0001.jpeg"]
    for rel, (_, expected) in SOURCES.items():
        with Image.open(out / _out_rel(rel)) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "L", expected), rel
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [r["file"] for r in records] == sorted(_out_rel(rel) for rel in SOURCES)
    for record in records:
        rel = next(r for r in SOURCES if _out_rel(r) == record["file"])
        data = (source / rel).read_bytes()
        assert Path(record["source"]) == (source / rel).resolve()
        assert record["source_bytes"] == len(data)
        assert record["source_sha256"] == hashlib.sha256(data).hexdigest()
        assert (record["source_width"], record["source_height"]) == SOURCES[rel][0][:2]
        assert (record["width"], record["height"]) == SOURCES[rel][1]
    assert json.loads((out / SETTINGS).read_text())["size"] == SIZE
    assert (out / "CITATION.txt").read_text() == "Kermany et al."

    again = prepare_dataset(source, size=SIZE, out=out, workers=1, progress=False)
    assert (again.converted, again.skipped, len(again.failed)) == (0, 8, 1)
    assert (out / MANIFEST).read_text().splitlines() == [json.dumps(r) for r in records]


def test_prepared_folder_is_accepted_by_discover(source, tmp_path):
    stats = prepare_dataset(source, size=SIZE, workers=2, progress=False)  # process pool
    assert stats.out == default_out(source, SIZE) == source.with_name("chest_xray_64")
    original, prepared = discover(source), discover(stats.out)
    assert len(prepared.files) == 6 and prepared.counts() == {"NORMAL": 3, "PNEUMONIA": 3}
    names = [f.relative_to(prepared.root).with_suffix("").as_posix() for f in prepared.files]
    healthy = [f for f in original.files if f.stat().st_size]
    assert names == [f.relative_to(source).with_suffix("").as_posix() for f in healthy]


def test_interrupted_run_is_completed_by_the_next(source, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(source, size=SIZE, out=out, workers=1, progress=False)
    lost = out / "val" / "NORMAL" / "IM-0003-0001.png"
    lost.unlink()  # as if the run stopped before this file
    stale = out / "val" / "NORMAL" / ".IM-0003-0001.png.tmp-999"
    stale.write_bytes(b"half a png")
    with open(out / MANIFEST, "a") as f:
        f.write('{"file": "train/NORMAL/IM-00')  # torn last line of a crashed run
    stats = prepare_dataset(source, size=SIZE, out=out, workers=1, progress=False)
    assert (stats.converted, stats.skipped) == (1, 7)
    assert lost.is_file() and not stale.exists()
    assert len((out / MANIFEST).read_text().splitlines()) == 8


def test_changed_source_is_redone(source, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(source, size=SIZE, out=out, workers=1, progress=False)
    _write(source / "test" / "NORMAL" / "IM-0004-0001.jpeg", 200, 100, "L", "JPEG")
    stats = prepare_dataset(source, size=SIZE, out=out, workers=1, progress=False)
    assert (stats.converted, stats.skipped) == (1, 7)
    with Image.open(out / "test" / "NORMAL" / "IM-0004-0001.png") as img:
        assert img.size == (128, 64)


def test_other_size_or_foreign_folder_is_refused(source, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(source, size=SIZE, out=out, workers=1, progress=False)
    with pytest.raises(DataError, match="at size 64"):
        prepare_dataset(source, size=32, out=out, workers=1, progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("...")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare_dataset(source, size=SIZE, out=busy, workers=1, progress=False)
    with pytest.raises(DataError, match="source folder itself"):
        prepare_dataset(source, size=SIZE, out=source, workers=1, progress=False)
