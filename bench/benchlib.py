"""Helpers shared by the benchmarks: machine line, stand-in weights, timing, tables, a server.

from benchlib import SHARED_DATA, machine_line, random_resnet34_weights, median
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch
from torchvision.models import resnet34

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "chest_xray"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    """Short hash of the checked-out commit ('+dirty' when tracked files changed), or '?'."""
    try:
        run = dict(cwd=REPO, capture_output=True, text=True, check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], **run).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu_name() -> str:
    """The processor's model name (Linux), else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """Date, commit, CPU, cores, torch and its threads, GPU, load average: one line."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    return (
        f"{datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, commit {commit()}; {cpu_name()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{gpu}; load average {load_average()}"
    )


def random_resnet34_weights(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised torchvision ResNet34 state dict saved in `folder`.

    It stands in for the ImageNet file (no download): throughput does not depend on the weights.
    """
    torch.manual_seed(seed)
    path = Path(folder) / "resnet34-random.pth"
    torch.save(resnet34().state_dict(), path)
    return path


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so a clock read means the work is done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wall and process CPU time between `start()` and `stop()`, CUDA work included."""

    def start(self, device: torch.device | str) -> None:
        sync(device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, device: torch.device | str, images: int) -> tuple[float, float]:
        """(images/s, CPU ms per image of this process: its threads, not its loader workers)."""
        sync(device)
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return images / wall, 1000 * cpu / images


def median(values: Sequence[float]) -> float:
    """Median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """'min-max' of the values, for the table."""
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Left-aligned first column, right-aligned others, widths fitted to the content."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for first, *rest in cells:
        right = [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        print("  ".join([first.ljust(widths[0]), *right]))


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def serving(
    model: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`pneumo-fastai serve MODEL OPTIONS` on a free loopback port, once it answers: its process
    and URL; stopped when the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "pneumo_fastai.cli", "serve", str(model), "--port", str(port)]
    server = subprocess.Popen(
        [*cmd, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(480):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=30)


def same_answer(answer: dict, reference) -> bool:
    """Whether a `predict` API answer is `reference`'s (a `Prediction` of the same file): no error,
    P(PNEUMONIA) within 1e-5, the same label."""
    return (
        answer["error"] is None
        and abs(answer["probability"] - reference.probability) <= 1e-5
        and answer["prediction"] == reference.label
    )


def serve_reference(model: Path, data: Path) -> tuple[list[Path], dict]:
    """The ten real X-rays the serve benches send (5 PNEUMONIA, 5 NORMAL of `data`'s train/), and
    `load_model(model).predict_batch`'s `Prediction` of each, by path string."""
    from pneumo_fastai import load_model

    xrays = sorted((data / "train" / "PNEUMONIA").iterdir())[:5]
    xrays += sorted((data / "train" / "NORMAL").iterdir())[:5]
    preds = load_model(model).predict_batch(xrays)
    return xrays, {str(f): pred for f, pred in zip(xrays, preds, strict=True)}
