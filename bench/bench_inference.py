"""Inference throughput: `XrayClassifier.predict_batch` on files vs a bare `model(x)` loop.

    python bench/bench_inference.py --n 64 --bs 1 32

For each device (CPU, and CUDA when available) and batch size it prints images/s for
- predict: files -> `predict_batch` -> Predictions (decode, resize, normalise, forward, softmax);
- model(x): the same network on the same images, already decoded and normalised into tensors,
  under `torch.inference_mode()`: the ceiling that loading and fastai's machinery eat into.
Without `--model` it trains a throwaway 1-epoch, randomly initialised export at `--size` on a few
images first: throughput does not depend on the weights. Images come from the real chest X-rays
in ../shared/data/chest_xray (224x224 JPEGs there; full-size originals decode slower).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pneumo_fastai import TrainConfig, load_model
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.split import limit_per_class
from pneumo_fastai.inference.predict import XrayClassifier
from pneumo_fastai.training.train import train

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray"


def throwaway_export(data: Path, size: int, folder: Path) -> Path:
    """Model card of a 1-epoch export from random weights, trained on 8 images per class."""
    config = TrainConfig(
        data=data, pretrained=False, epochs=1, size=size, bs=8, limit=8, num_workers=0,
        device="cpu", exports=folder,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # fastai's per-epoch lines
        return train(config, progress=False, log=lambda _: None).paths.card


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls of `fn` (CUDA work included)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench_device(classifier: XrayClassifier, files: list[Path], sizes: list[int], repeat: int):
    """(bs, predict images/s, model(x) images/s) for each batch size on the model's device."""
    exported = classifier.exported
    net = exported.learner.model.eval()
    rows = []
    for bs in sizes:
        classifier.predict_batch(files[: 2 * bs], bs=bs)  # warm-up: allocators, cudnn, caches
        t_predict = timed(lambda bs=bs: classifier.predict_batch(files, bs=bs), repeat)

        dl = exported.dataloader(files, bs=bs, num_workers=0)
        batches = [
            b[0] if isinstance(b, tuple) else b for b in dl
        ]  # decoded, normalised, on device

        def loop(batches=batches) -> None:
            with torch.inference_mode():
                for x in batches:
                    net(x).softmax(dim=1)

        loop()
        t_model = timed(loop, repeat)
        rows.append((bs, len(files) / t_predict, len(files) / t_model))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout X-rays")
    parser.add_argument("--model", type=Path, help="an export's .json (default: a throwaway one)")
    parser.add_argument("--n", type=int, default=64, help="images per measurement")
    parser.add_argument("--bs", type=int, nargs="+", default=[1, 32], help="batch sizes")
    parser.add_argument("--size", type=int, default=224, help="input size of a throwaway export")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs; the best is kept")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = limit_per_class(list(discover(args.data).files), args.n // 2, seed=0)[: args.n]

    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        card = args.model or throwaway_export(args.data, args.size, Path(tmp))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        results = [
            (device, *row)
            for device in devices
            for row in bench_device(load_model(card, device=device), files, args.bs, args.repeat)
        ]

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"
    print(
        f"{len(files)} images from {args.data}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"CPU threads{gpu}"
    )
    print(f"{'device':<7}{'bs':>4}{'predict img/s':>16}{'model(x) img/s':>17}{'ratio':>8}")
    for device, bs, predict_rate, model_rate in results:
        ratio = predict_rate / model_rate
        print(f"{device:<7}{bs:>4}{predict_rate:>16.1f}{model_rate:>17.1f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
