"""Inference: each engine's start-up, throughput and memory, against a bare `model(x)` loop.

    python bench/bench_inference.py --n 64 --size 128          # a throwaway export
    python bench/bench_inference.py --model exports/x.json     # an export (its ONNX is made)

Side by side in one run, each engine in a fresh process (so that start-up and peak memory are
its own):
- start-up: from the process starting (interpreter, imports, loading the export, sha256 checks)
  to the first prediction of one file;
- img/s at batch 1 and 32: `predict_batch` on images already decoded in memory (decoding is the
  same code for every engine), best of `--repeat` runs;
- peak memory: the process's largest resident set.
Engines: torch fp32 (`--precision fp32`), torch with the device rule (`auto`: bf16 and
channels-last where this CPU runs them faster), and onnxruntime (`--engine onnx`). The yardstick
is a bare fp32 `model(x)` loop in NCHW on tensors already normalised, measured in this process.
Without `--model` it trains a 1-epoch, randomly initialised export at `--size` on 16 images:
speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray"
ENGINES = {
    "torch fp32": ("torch", "fp32"),
    "torch auto": ("torch", "auto"),
    "onnxruntime": ("onnx", ""),
}


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM: reset at exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """One engine in this fresh process: start-up, throughput, and print them as JSON."""
    started = float(os.environ["BENCH_STARTED"])
    from pneumo_fastai import load_model
    from pneumo_fastai.data.images import load_xray

    engine, precision = ENGINES[args.worker]
    kwargs = {"precision": precision} if engine == "torch" else {"engine": "onnx"}
    files = [Path(f) for f in args.files]
    model = load_model(args.model, **kwargs)
    model.predict(files[0])
    startup = time.time() - started
    images = [load_xray(f) for f in files]
    rates = {}
    for bs in (1, 32):
        model.predict_batch(images[: 2 * bs], bs=bs)  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            model.predict_batch(images, bs=bs)
            best = min(best, time.perf_counter() - start)
        rates[bs] = len(images) / best
    plan = getattr(getattr(model, "exported", None), "plan", None)
    detail = f"{plan.precision}{', NHWC' if plan.channels_last else ''}" if plan else "CPU EP"
    peak = peak_mib()
    print(json.dumps({"startup": startup, "rates": rates, "detail": detail, "peak_mib": peak}))


def bare_rate(card: Path, files: list[Path], bs: int, repeat: int) -> float:
    """img/s of the bare fp32 NCHW `model(x)` loop on normalised tensors in memory."""
    import torch

    from pneumo_fastai.data.images import load_xray
    from pneumo_fastai.inference.loading import load_export

    exported = load_export(card, precision="fp32")
    net = copy.deepcopy(exported.learner.model).eval().to(memory_format=torch.contiguous_format)
    dl = exported.dataloader([load_xray(f) for f in files], bs=bs, num_workers=0)
    batches = [b[0] if isinstance(b, tuple) else b for b in dl]
    best = float("inf")
    with torch.inference_mode():
        for x in batches[:1]:
            net(x)
        for _ in range(repeat):
            start = time.perf_counter()
            for x in batches:
                net(x).softmax(dim=1)
            best = min(best, time.perf_counter() - start)
    return len(files) / best


def throwaway_export(data: Path, size: int, folder: Path) -> Path:
    """Model card of a 1-epoch export from random weights, trained on 8 images per class."""
    from pneumo_fastai import TrainConfig
    from pneumo_fastai.training.train import train

    config = TrainConfig(
        data=data, pretrained=False, epochs=1, size=size, bs=8, limit=8, num_workers=0,
        device="cpu", exports=folder,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # fastai's per-epoch lines
        return train(config, progress=False, log=lambda _: None).paths.card


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout X-rays")
    p.add_argument("--model", type=Path, help="an export's .json (default: a throwaway one)")
    p.add_argument("--n", type=int, default=64, help="images per measurement")
    p.add_argument("--size", type=int, default=128, help="input size of a throwaway export")
    p.add_argument("--repeat", type=int, default=2, help="timed runs; the best is kept")
    p.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from benchlib import machine_line, print_table

    from pneumo_fastai.data.layout import discover
    from pneumo_fastai.data.split import limit_per_class
    from pneumo_fastai.inference.onnx_export import export_onnx

    print(machine_line())
    files = limit_per_class(list(discover(args.data).files), args.n // 2, seed=0)[: args.n]
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        source = args.model or throwaway_export(args.data, args.size, Path(tmp) / "trained")
        card = Path(tmp) / "copy" / source.name
        card.parent.mkdir()
        for f in source.parent.glob(f"{source.stem}.*"):
            shutil.copy(f, card.parent / f.name)
        if "onnx" not in json.loads(card.read_text())["files"]:
            export_onnx(card)
        bare = {bs: bare_rate(card, files, bs, args.repeat) for bs in (1, 32)}
        rows = [["bare model(x), fp32 NCHW", "-", f"{bare[1]:.1f}", f"{bare[32]:.1f}", "-", "1.00"]]
        for name in ENGINES:
            env = {**os.environ, "BENCH_STARTED": repr(time.time())}
            cmd = [sys.executable, __file__, "--worker", name, "--model", str(card),
                   "--repeat", str(args.repeat), "--files", *map(str, files)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append([
                f"{name} ({r['detail']})", f"{r['startup']:.1f}", f"{r['rates']['1']:.1f}",
                f"{r['rates']['32']:.1f}", f"{r['peak_mib']:.0f}",
                f"{r['rates']['32'] / bare[32]:.2f}",
            ])  # fmt: skip
    print(f"{len(files)} decoded images; {os.cpu_count()} cores")
    print_table(
        ["engine", "start-up s", "img/s bs 1", "img/s bs 32", "peak MiB", "vs bare (bs 32)"], rows
    )


if __name__ == "__main__":
    main()
