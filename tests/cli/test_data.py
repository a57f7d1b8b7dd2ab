"""`pneumo-fastai data ...` through typer's test runner on `data_app`."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import socket
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pneumo_fastai.cli.data import data_app
from pneumo_fastai.errors import DataError

runner = CliRunner()
NAMES = (
    "train/NORMAL/IM-0001-0001.jpeg",
    "train/NORMAL/IM-0002-0001.jpeg",
    "train/PNEUMONIA/person1_bacteria_1.jpeg",
    "train/PNEUMONIA/person2_virus_2.jpeg",
    "test/NORMAL/IM-0003-0001.jpeg",
    "test/PNEUMONIA/person3_virus_3.jpeg",
)


def _jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, size[::-1], dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "chest_xray"
    for seed, name in enumerate(NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_jpeg(seed, (80, 60)))
    return root


def test_download_prints_licence_and_citation(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for seed, name in enumerate(NAMES):
            zf.writestr(f"chest_xray/{name}", _jpeg(seed))
        zf.writestr("__MACOSX/chest_xray/._train", b"junk")
    (served / "ChestXRay2017.zip").write_bytes(buf.getvalue())
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ChestXRay2017.zip"
    dest = tmp_path / "data"
    args = ["download", "--dest", str(dest), "--url", url, "--sha256"]
    try:
        result = runner.invoke(data_app, [*args, hashlib.sha256(buf.getvalue()).hexdigest()])
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.output
    assert "CC BY 4.0" in result.output and "doi:10.1016/j.cell.2018.02.010" in result.output
    assert "train 2 NORMAL / 2 PNEUMONIA" in result.output
    assert (dest / "chest_xray" / "LICENSE-DATA.txt").is_file()
    assert not (dest / "__MACOSX").exists() and not (dest / "chest_xray" / "__MACOSX").exists()


def test_download_offline_raises_data_error_naming_data_option(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(
        data_app, ["download", "--dest", str(tmp_path), "--url", f"http://127.0.0.1:{port}/x"]
    )
    assert isinstance(result.exception, DataError)
    assert "--data PATH" in str(result.exception)


def test_check_ok_writes_json(dataset, tmp_path):
    report = tmp_path / "reports" / "check.json"
    result = runner.invoke(data_app, ["check", str(dataset), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "OK for training" in result.output and "Exact pixel duplicates: 0" in result.output
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert data["counts"]["test"] == {"NORMAL": 1, "PNEUMONIA": 1}


def test_check_unsound_dataset_exits_2(dataset, tmp_path):
    shutil.rmtree(dataset / "train" / "PNEUMONIA")
    report = tmp_path / "check.json"
    result = runner.invoke(data_app, ["check", str(dataset), "--quick", "--json", str(report)])
    assert result.exit_code == 2
    assert "PROBLEM" in result.output and "train/PNEUMONIA is missing" in result.output
    assert json.loads(report.read_text())["ok"] is False


def test_check_missing_folder_raises_data_error(tmp_path):
    result = runner.invoke(data_app, ["check", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, DataError)


def test_prepare_then_rerun_does_nothing(dataset, tmp_path):
    out = tmp_path / "small"
    args = ["prepare", str(dataset), "--size", "32", "--out", str(out), "--workers", "1"]
    first = runner.invoke(data_app, args)
    assert first.exit_code == 0, first.output
    assert "6 written, 0 already done, 0 unreadable, of 6 images" in first.output
    with Image.open(out / "train" / "NORMAL" / "IM-0001-0001.png") as img:
        assert img.size == (43, 32)
    second = runner.invoke(data_app, args)
    assert "0 written, 6 already done" in second.output
