"""`pneumo-fastai serve`: the API through gradio_client, bad input, limits, and a real browser."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from pneumo_fastai.inference.predict import load_model

from ..conftest import SHARED_DATA, free_port
from ..data.test_images import png_header

gradio_client = pytest.importorskip("gradio_client", reason="gradio_client comes with [dev]")
pytestmark = [pytest.mark.shared_data, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
MAX_FILE_MB = 0.5
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def server(real_export: Path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pneumo_fastai.cli", "serve", str(real_export),
           "--port", str(port), "--max-file-mb", str(MAX_FILE_MB)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: str):
    return gradio_client.Client(server, verbose=False)


def xray(n: int = 0) -> Path:
    return sorted((SHARED_DATA / "train" / "PNEUMONIA").iterdir())[n]


def test_the_api_gives_predicts_probability(client, real_export):
    out = client.predict(gradio_client.handle_file(str(xray())), api_name="/predict")
    expected = load_model(real_export).predict(xray())
    assert out["error"] is None
    assert out["probability"] == pytest.approx(expected.probability, abs=1e-5)
    assert out["prediction"] == expected.label and out["prediction_argmax"] == expected.label_argmax
    assert out["threshold"] == pytest.approx(expected.threshold)


def test_a_bad_file_is_an_error_and_the_next_request_works(client, tmp_path):
    for name, content in (("notes.png", b"not an image at all"), ("empty.jpeg", b"")):
        (bad := tmp_path / name).write_bytes(content)
        out = client.predict(gradio_client.handle_file(str(bad)), api_name="/predict")
        assert out["probability"] is None and out["error"], out
    good = client.predict(gradio_client.handle_file(str(xray(1))), api_name="/predict")
    assert good["error"] is None and 0 <= good["probability"] <= 1


def test_an_image_with_too_many_pixels_is_an_error_not_a_crash(client, tmp_path):
    (bomb := tmp_path / "bomb.png").write_bytes(png_header(20_000, 20_000))  # 400 Mpx, 100 bytes
    out = client.predict(gradio_client.handle_file(str(bomb)), api_name="/predict")
    assert out["probability"] is None and "too large" in out["error"]
    again = client.predict(gradio_client.handle_file(str(xray(2))), api_name="/predict")
    assert again["error"] is None


def test_an_upload_over_the_limit_is_refused_before_it_is_read(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(xray().read_bytes() + b"\0" * int(MAX_FILE_MB * 1.5 * 2**20))
    with pytest.raises(Exception, match=r"(?i)size|large|exceed"):
        client.predict(gradio_client.handle_file(str(big)), api_name="/predict")


def test_the_page_in_a_real_browser_shows_the_answer_and_stays_on_loopback(server, real_export):
    if not CHROMIUM.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run must apt-get install chromium")
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    expected = load_model(real_export).predict(xray())
    requests: list[str] = []
    shot = os.environ.get("PNEUMO_SCREENSHOT")  # where to keep the page's picture, if anywhere
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(xray()))
        decision = page.get_by_text("P(PNEUMONIA) =")
        decision.wait_for(timeout=120_000)
        page.get_by_text("Grad-CAM").first.wait_for()
        page.wait_for_timeout(1500)  # let the images paint
        text = decision.inner_text()
        if shot:
            page.screenshot(path=shot, full_page=False)
        browser.close()
    assert f"P(PNEUMONIA) = {expected.probability:.4f}" in text
    assert expected.label in text
    hosts = {
        urlparse(u).hostname
        for u in requests
        if urlparse(u).scheme in ("http", "https", "ws", "wss")
    }
    assert hosts and hosts <= LOOPBACK, hosts


def test_serve_without_gradio_says_which_extra_to_install(real_export, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "gradio.py").write_text("raise ImportError('gradio is not installed')\n")
    env = {**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "pneumo_fastai.cli", "serve", str(real_export)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert (
        result.returncode == 2 and "[serve]" in result.stderr and "Traceback" not in result.stderr
    )


def test_a_public_host_prints_a_warning(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pneumo_fastai.cli", "serve", str(tmp_path / "none.json"),
         "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    words = " ".join(result.stderr.split())
    assert "anyone who can reach this machine" in words and "not found" in words
    assert result.returncode == 2
