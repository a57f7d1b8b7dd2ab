"""`data download` against a loopback HTTP server that serves a tiny release-shaped zip."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import sys
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_fastai.datatools.download import (
    CITATION_FILE,
    LICENSE_FILE,
    MARKER,
    URL_ENV,
    download_dataset,
)
from pneumo_fastai.errors import DataError
from pneumo_fastai.zipfiles import DATASET, extract_zip

IMAGES = {
    "chest_xray/train/NORMAL/IM-0001-0001.jpeg": 1,
    "chest_xray/train/NORMAL/IM-0002-0001.jpeg": 2,
    "chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg": 3,
    "chest_xray/train/PNEUMONIA/person2_virus_2.jpeg": 4,
    "chest_xray/test/NORMAL/IM-0003-0001.jpeg": 5,
    "chest_xray/test/PNEUMONIA/person3_bacteria_3.jpeg": 6,
}
JUNK = [
    "__MACOSX/chest_xray/train/NORMAL/._IM-0001-0001.jpeg",
    "__MACOSX/._chest_xray",
    "chest_xray/.DS_Store",
    "chest_xray/train/PNEUMONIA/._person1_bacteria_1.jpeg",
]


def _jpeg(seed: int) -> bytes:
    """A noisy grayscale JPEG (noise keeps the zip large enough to cut mid-body)."""
    pixels = np.random.RandomState(seed).randint(0, 256, (96, 80), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def release() -> bytes:
    """Bytes of a small zip in the Mendeley layout, macOS junk included."""
    entries = {name: _jpeg(seed) for name, seed in IMAGES.items()}
    entries.update({name: b"junk" for name in JUNK})
    return _zip(entries)


class _Server:
    """Loopback HTTP server for one payload; can cut the first body and ignore Range."""

    def __init__(self, payload: bytes, cut_first: bool = False, honour_range: bool = True):
        self.payload, self.cut_first, self.honour_range = payload, cut_first, honour_range
        self.ranges: list[str | None] = []  # Range header of each GET, None when absent
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                data, start = server.payload, 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first and len(server.ranges) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ChestXRay2017.zip"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _names(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_download_installs_kaggle_layout_without_junk(tmp_path, release, monkeypatch):
    dest = tmp_path / "data"
    with _Server(release) as server:
        monkeypatch.setenv(URL_ENV, server.url)  # the URL comes from the environment
        result = download_dataset(dest, sha256=_sha(release), progress=False)
        assert server.ranges == [None]
        again = download_dataset(dest, sha256=_sha(release), progress=False)
        assert len(server.ranges) == 1, "a finished download must not fetch again"
    root = dest / "chest_xray"
    assert result.root == root and not result.already_present and again.already_present
    assert result.sha256 == _sha(release) and result.origin == server.url
    expected = {name.removeprefix("chest_xray/") for name in IMAGES}
    assert _names(root) == expected | {LICENSE_FILE, CITATION_FILE, MARKER}
    assert result.counts == {
        "train": {"NORMAL": 2, "PNEUMONIA": 2},
        "test": {"NORMAL": 1, "PNEUMONIA": 1},
    }
    assert again.counts == result.counts
    assert "CC BY 4.0" in (root / LICENSE_FILE).read_text()
    assert "10.17632/rscbjbr9sj.2" in (root / CITATION_FILE).read_text()
    assert json.loads((root / MARKER).read_text())["sha256"] == _sha(release)
    assert sorted(p.name for p in dest.iterdir()) == ["chest_xray"], "archive and temp left over"


def test_cut_connection_is_resumed_by_the_next_run(tmp_path, release):
    dest = tmp_path / "data"
    part = dest / "ChestXRay2017.zip.part"
    with _Server(release, cut_first=True) as server:
        with pytest.raises(DataError, match="interrupted") as err:
            download_dataset(dest, url=server.url, sha256=_sha(release), retries=0, progress=False)
        assert "--data" in str(err.value)
        have = part.stat().st_size
        assert 0 < have < len(release)
        assert not (dest / "chest_xray").exists()
        result = download_dataset(dest, url=server.url, sha256=_sha(release), progress=False)
    assert server.ranges == [None, f"bytes={have}-"]
    assert result.resumed_from == have
    assert (dest / "chest_xray" / MARKER).is_file() and not part.exists()


def test_cut_connection_is_resumed_within_one_run(tmp_path, release):
    with _Server(release, cut_first=True) as server:
        result = download_dataset(tmp_path, url=server.url, sha256=_sha(release), progress=False)
    assert server.ranges[0] is None and server.ranges[1].startswith("bytes=")
    assert result.counts["train"] == {"NORMAL": 2, "PNEUMONIA": 2}


def test_server_ignoring_range_restarts_cleanly(tmp_path, release):
    part = tmp_path / "ChestXRay2017.zip.part"
    part.write_bytes(b"stale bytes from another attempt")
    with _Server(release, honour_range=False) as server:
        download_dataset(tmp_path, url=server.url, sha256=_sha(release), progress=False)
    assert server.ranges[0].startswith("bytes=")
    assert _names(tmp_path / "chest_xray") >= {n.removeprefix("chest_xray/") for n in IMAGES}


def test_checksum_mismatch_is_refused_and_nothing_looks_finished(tmp_path, release):
    with _Server(release) as server, pytest.raises(DataError, match="sha256"):
        download_dataset(tmp_path, url=server.url, sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_malformed_sha256_is_refused_before_downloading(tmp_path):
    with pytest.raises(DataError, match="64 hex digits"):
        download_dataset(tmp_path, url="http://127.0.0.1:9/x", sha256="abc", progress=False)


def test_wrong_size_for_the_release_is_refused_before_downloading(tmp_path, release):
    with _Server(release) as server, pytest.raises(DataError, match="not the expected release"):
        download_dataset(tmp_path, url=server.url, progress=False)  # default: Mendeley's size
    assert not (tmp_path / "chest_xray").exists()


def test_offline_error_names_data_option(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    with pytest.raises(DataError, match="--data PATH") as err:
        download_dataset(tmp_path, url=f"http://127.0.0.1:{port}/x.zip", progress=False)
    assert "Cannot reach" in str(err.value)
    assert not (tmp_path / "chest_xray").exists()


def test_unfinished_folder_is_not_taken_for_a_download(tmp_path):
    (tmp_path / "chest_xray" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(MARKER)):
        download_dataset(tmp_path, url="http://127.0.0.1:9/never-asked", progress=False)


def test_zip_slip_entries_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"chest_xray/train/NORMAL/a.jpeg": b"x", "../../evil.txt": b"x"}))
    with pytest.raises(DataError, match="outside the extraction folder"):
        extract_zip(archive, tmp_path / "out", DATASET)
    assert not (tmp_path.parent / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def _kaggle_cache(folder: Path) -> Path:
    """Kaggle's unpacked archive: chest_xray/{train,val,test}, a nested copy and macOS junk."""
    for split in ("train", "val", "test"):
        for cls, stem in (("NORMAL", "IM-0001-0001"), ("PNEUMONIA", "person1_virus_1")):
            target = folder / "chest_xray" / split / cls / f"{stem}.jpeg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_jpeg(len(split)))
            (target.parent / f"._{stem}.jpeg").write_bytes(b"junk")
    (folder / "chest_xray" / "chest_xray" / "train").mkdir(parents=True)
    (folder / "__MACOSX" / "chest_xray").mkdir(parents=True)
    (folder / "chest_xray" / ".DS_Store").write_bytes(b"junk")
    return folder


def test_kaggle_source_installs_through_kagglehub(tmp_path, monkeypatch):
    cache = _kaggle_cache(tmp_path / "cache")
    fake = types.SimpleNamespace(dataset_download=lambda handle: str(cache))
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    result = download_dataset(tmp_path / "data", source="kaggle", progress=False)
    assert result.source == "kaggle" and result.origin == "paultimothymooney/chest-xray-pneumonia"
    assert result.counts == {s: {"NORMAL": 1, "PNEUMONIA": 1} for s in ("train", "val", "test")}
    names = _names(result.root)
    assert not any("._" in n or "DS_Store" in n for n in names)
    assert (cache / "chest_xray" / "train").is_dir(), "kagglehub's cache must be left intact"


def test_kaggle_source_refuses_mendeley_options(tmp_path):
    with pytest.raises(DataError, match="--source mendeley only"):
        download_dataset(tmp_path, source="kaggle", url="http://127.0.0.1:9/x", progress=False)


def test_kaggle_source_without_kagglehub_or_credentials_says_how(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import fails as if not installed
    with pytest.raises(DataError, match="pip install kagglehub"):
        download_dataset(tmp_path, source="kaggle", progress=False)
    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace())
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    with pytest.raises(DataError, match=r"kaggle\.json"):
        download_dataset(tmp_path, source="kaggle", progress=False)
