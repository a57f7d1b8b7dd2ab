"""`pneumo-fastai serve`: the API through gradio_client, bad input, limits, and a real browser.

The served model is a 1-epoch 64 px export trained here, or the export named by PNEUMO_SERVE_MODEL
(a card path); PNEUMO_SCREENSHOT names where to keep the browser's picture of the page, e.g.

    PNEUMO_SERVE_MODEL=runs/x.json PNEUMO_SCREENSHOT=docs/serve.png pytest tests/serve -k browser
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
from PIL import Image

from pneumo_fastai.inference.predict import load_model
from pneumo_fastai.inference.results import Prediction

from ..helpers.cli import run_main
from ..helpers.data import SHARED_DATA, png_header
from ..helpers.system import free_port, one_torch_thread

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
def served_export(request: pytest.FixtureRequest) -> Path:
    """The export the server serves: PNEUMO_SERVE_MODEL's, else the tiny one trained here."""
    named = os.environ.get("PNEUMO_SERVE_MODEL")
    return Path(named) if named else request.getfixturevalue("real_export")


@pytest.fixture(scope="module")
def server_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's temp folder (TMPDIR), to see what requests leave behind."""
    return tmp_path_factory.mktemp("server_tmp")


@pytest.fixture(scope="module")
def server(served_export: Path, server_temp: Path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(server_temp)}
    cmd = [sys.executable, "-m", "pneumo_fastai.cli", "serve", str(served_export),
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


def expected_for(export: Path, path: Path) -> Prediction:
    """`predict`'s answer in this process, on one thread like the server (results can differ in
    the last digits with the number of threads)."""
    with one_torch_thread():
        return load_model(export).predict(path)


def test_the_api_gives_predicts_probability(client, served_export):
    out = client.predict(gradio_client.handle_file(str(xray())), api_name="/predict")
    expected = expected_for(served_export, xray())
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


def _uploads_left(folder: Path, names: set[str], timeout: float) -> list[Path]:
    """Files named `names` still under `folder` once `timeout` seconds have passed (or none)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in folder.rglob("*") if p.name in names]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    return left


def test_concurrent_clients_sending_the_same_files_get_predicts_answers(
    server, served_export, server_temp, tmp_path
):
    """Issue 30's load, small: clients at once, the same bytes sent by several (Gradio keeps one
    copy of them), a hostile file among them; every answer is `predict`'s, and the uploads go."""
    files = [xray(n) for n in (3, 4)]
    expected = {f: expected_for(served_export, f) for f in files}
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20_000, 20_000))

    def client_run(k: int) -> list[tuple[Path, dict]]:
        client = gradio_client.Client(server, verbose=False)
        sent = [files[(k + i) % 2] for i in range(3)] + ([bomb] if k == 0 else [])
        return [(f, client.predict(gradio_client.handle_file(str(f)), api_name="/predict"))
                for f in sent]  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        answers = [a for run in pool.map(client_run, range(4)) for a in run]
    assert len(answers) == 13
    for f, out in answers:
        if f == bomb:
            assert out["probability"] is None and "too large" in out["error"]
            continue
        assert out["error"] is None, out
        assert out["probability"] == pytest.approx(expected[f].probability, abs=1e-5)
        assert out["prediction"] == expected[f].label
    names = {f.name for f in [*files, bomb]}
    assert _uploads_left(server_temp, names, timeout=10) == []


def small_png(path: Path) -> None:
    """Rewrite a screenshot as a 256-colour dithered PNG: a third of the size, for git."""
    with Image.open(path) as shot:
        rgb = shot.convert("RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, kmeans=2)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    assert path.stat().st_size < 200_000, "screenshots over 200 kB stay out of git"


@contextmanager
def browser_page(requests: list[str]) -> Iterator:
    """A page in Debian's chromium (headless, no network but the server); URLs asked go in
    `requests`."""
    if not CHROMIUM.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run must apt-get install chromium")
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.on("request", lambda r: requests.append(r.url))
        try:
            yield page
        finally:
            browser.close()


def test_the_page_in_a_real_browser_shows_the_answer_and_stays_on_loopback(server, served_export):
    expected = expected_for(served_export, xray())
    requests: list[str] = []
    shot = os.environ.get("PNEUMO_SCREENSHOT")  # where to keep the page's picture, if anywhere
    with browser_page(requests) as page:
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(xray()))
        decision = page.get_by_text("P(PNEUMONIA) =")
        decision.wait_for(timeout=120_000)
        for panel in ("#seen img", "#gradcam img"):
            page.locator(panel).wait_for()
        page.wait_for_timeout(1500)  # let the images paint
        text = page.locator("#decision").inner_text()
        headline = page.locator("#decision h1").inner_text()
        sizes = [page.locator(p).bounding_box() for p in ("#seen img", "#gradcam img")]
        if shot:
            page.screenshot(path=shot, full_page=False)
            small_png(Path(shot))
    assert f"P(PNEUMONIA) = {expected.probability:.4f}" in text
    assert headline.strip() == expected.label  # the decision at the threshold, not the argmax
    assert f"argmax): {expected.label_argmax}" in text
    assert all(box["width"] >= 300 and box["height"] >= 300 for box in sizes), sizes
    hosts = {
        urlparse(u).hostname
        for u in requests
        if urlparse(u).scheme in ("http", "https", "ws", "wss")
    }
    assert hosts and hosts <= LOOPBACK, hosts


def _leftovers(folder: Path, timeout: float = 60) -> list[Path]:
    """The batch folders left in `folder`, once the last request has had time to finish."""
    deadline = time.monotonic() + timeout
    while (left := list(folder.glob("pneumo-serve-*"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_batch_request_serves_its_csv_and_leaves_no_folder_behind(server, server_temp, tmp_path):
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n in (1, 2):
            zf.write(xray(n), f"scans/{xray(n).name}")
    with browser_page([]) as page:
        page.goto(server)
        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-files input[type=file]").set_input_files([str(xray()), str(archive)])
        page.locator(f"#batch-files [aria-label='{archive.name}']").wait_for()  # uploaded
        page.get_by_role("button", name="Predict all").click()
        link = page.locator("#batch-csv a[href]").first
        link.wait_for(timeout=120_000)
        left = _leftovers(server_temp)
        response = page.request.get(urljoin(server, link.get_attribute("href")))
        served = response.text() if response.ok else None
        page.wait_for_timeout(1000)  # the request has finished: the answer stays on the page
        still_shown = page.locator("#batch-csv a[href]").count()
    assert left == []  # the request's folder (CSV, extracted zip) is gone...
    assert served and still_shown  # ...and Gradio serves its own copy of the CSV
    table = list(csv.DictReader(io.StringIO(served)))
    assert sorted(row["file"] for row in table) == sorted(xray(n).name for n in (0, 1, 2))
    assert all(row["error"] == "" and 0 <= float(row["probability"]) <= 1 for row in table)


def test_serve_without_gradio_says_which_extra_to_install(served_export, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "gradio.py").write_text("raise ImportError('gradio is not installed')\n")
    env = {**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "pneumo_fastai.cli", "serve", str(served_export)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert (
        result.returncode == 2 and "[serve]" in result.stderr and "Traceback" not in result.stderr
    )


def test_a_public_host_prints_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # what `serve` sets, put back after
    code = run_main(monkeypatch, "serve", tmp_path / "none.json", "--host", "0.0.0.0")
    words = " ".join(capsys.readouterr().err.split())
    assert "anyone who can reach this machine" in words and "not found" in words
    assert code == 2
