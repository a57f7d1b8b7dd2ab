"""What `serve` is sent: zip bombs and odd zips, requests in parallel, uploads with patient data.

The handlers are called in process, as Gradio calls them, on the cheap fresh-weights export.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from pneumo_fastai.errors import DataError
from pneumo_fastai.zipfiles import UPLOAD, ZipLimits, extract_zip

from ..helpers.data import write_image

pytest.importorskip("gradio", reason="serve needs the [serve] extra")
from pneumo_fastai.serve import app  # after the skip, for when Gradio is missing
from pneumo_fastai.serve.uploads import Uploads

SMALL = ZipLimits(max_bytes=1 << 20, max_entries=50)


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _encrypted(path: Path) -> Path:
    """A zip whose entries say they are encrypted (bit 0 of the flags, local and central)."""
    data = bytearray(_zip(path, {"a.png": b"x" * 100}).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature) + offset
        data[at] |= 0x01
    path.write_bytes(bytes(data))
    return path


# Item 7: caps and clear errors in the one extractor
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: _zip(p, {"bomb.png": bytes(16 << 20)}), "bytes, more than"),
        (lambda p: _zip(p, {f"{i}.png": b"x" for i in range(200)}), "entries, more than"),
        (_encrypted, "encrypted"),
        (lambda p: _zip(p, {"a": b"file", "a/b.png": b"x"}), "clash"),
        (lambda p: _zip(p, {"a/b.png": b"x", "a": b"file"}), "clash"),
    ],
)
def test_a_hostile_zip_is_refused_and_leaves_nothing(tmp_path, make, expected):
    archive = make(tmp_path / "upload.zip")
    assert archive.stat().st_size < 1 << 20  # small on disk
    out = tmp_path / "out"
    with pytest.raises(DataError, match=expected) as refused:
        extract_zip(archive, out, SMALL, name="upload.zip")
    assert str(tmp_path) not in str(refused.value)
    assert not out.exists()


def test_a_zip_bomb_whose_directory_lies_is_refused(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "lie.zip", {"bomb.png": bytes(4 << 20)})
    real = zipfile.ZipFile.infolist

    def lying(self):
        infos = real(self)
        for info in infos:
            info.file_size = 10  # what a hand-made archive may declare
        return infos

    monkeypatch.setattr(zipfile.ZipFile, "infolist", lying)
    with pytest.raises(DataError, match="not a readable zip"):
        extract_zip(archive, tmp_path / "out", SMALL)
    assert not (tmp_path / "out").exists()


def _sent(path: Path, into: Path) -> str:
    """`path` copied as Gradio keeps an upload: in a folder of its own."""
    folder = Path(tempfile.mkdtemp(dir=into))
    return shutil.copy(path, folder / path.name)


def test_serve_answers_a_zip_bomb_with_a_message_and_keeps_nothing(
    classifier, tmp_path, monkeypatch
):
    monkeypatch.setattr(app, "UPLOAD", SMALL)
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    bomb = _sent(_zip(tmp_path / "bomb.zip", {"x.png": bytes(16 << 20)}), uploads)
    locked = _sent(_encrypted(tmp_path / "locked.zip"), uploads)
    for upload, expected in ((bomb, "bytes, more than"), (locked, "encrypted")):
        with pytest.warns(UserWarning, match=expected) as shown:
            answer = list(app.predict_batch(classifier, Uploads(0), [upload]))
        assert answer == [([], None)]
        assert str(uploads) not in str(shown[0].message) and str(work) not in str(shown[0].message)
    assert list(work.iterdir()) == [] and list(uploads.rglob("*")) == []
    assert UPLOAD.max_bytes <= 1 << 30 and UPLOAD.max_entries <= 5_000


# Item 9: the one Learner is used by one request at a time, at any concurrency
def test_parallel_requests_take_turns_on_the_network_and_get_the_sequential_answers(
    classifier, tmp_path
):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    images = [write_image(tmp_path / f"x{i}.png", seed=i, size=(80, 80)) for i in range(4)]
    expected = {p.name: classifier.predict(p).probability for p in images}
    model = classifier.exported.learner.model
    inside, most = [0], [0]
    guard = threading.Lock()
    forward = model.forward

    def watched(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)  # widen the window a race needs
        try:
            return forward(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    model.forward = watched
    try:
        with ThreadPoolExecutor(4) as pool:
            api_predict = partial(app.api_predict, classifier, Uploads(0))
            predict_one = partial(app.predict_one, classifier, Uploads(0))
            api = [pool.submit(api_predict, _sent(p, uploads)) for p in images * 4]
            one = [pool.submit(predict_one, _sent(p, uploads)) for p in images]
            answers = [f.result() for f in api]
            shown = [f.result() for f in one]
    finally:
        del model.forward
    assert most[0] == 1
    for answer, path in zip(answers, images * 4, strict=True):
        assert answer["error"] is None
        assert answer["probability"] == pytest.approx(expected[path.name], abs=1e-6)
    assert all(heat is not None for *_, heat in shown)
    assert list(uploads.rglob("*.png")) == []  # item 15: every upload deleted once answered


# Item 15: no server path on the page or in an answer
def test_the_page_and_the_answers_show_no_server_path(classifier, tmp_path):
    secret = str(Path(classifier.card.data.root))
    assert secret.startswith("/")
    demo = app.build_app(classifier, classifier.card_path)
    page = str(demo.config)
    assert secret not in page and str(classifier.card_path.parent) not in page
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (bad := tmp_path / "bad.png").write_bytes(b"not an image")
    answer = app.api_predict(classifier, Uploads(0), sent := _sent(bad, uploads))
    assert answer["error"] and str(Path(sent).parent) not in answer["error"]
    assert not Path(sent).exists() and app.CACHE_CLEANUP[1] <= 3600
