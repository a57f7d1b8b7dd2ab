"""Inference throughput: `XrayClassifier.predict_batch` on files vs a bare `model(x)` loop.

    python bench/bench_inference.py --n 64 --bs 1 32

For each device (CPU, and CUDA when available) and batch size it prints images/s for
- bare model(x) fp32: the network on the images already decoded and normalised into tensors,
  under `torch.inference_mode()`, in fp32: the yardstick;
- predict fp32 / predict auto: `predict_batch` (resize, normalise, forward, softmax, Predictions)
  with `--precision fp32` and with the device rule (bf16 and channels-last where this CPU runs
  them faster), on the same decoded images ("decoded", the ratio's side) and on the files
  (decoding included).
Without `--model` it trains a throwaway 1-epoch, randomly initialised export at `--size` on a few
images first: throughput does not depend on the weights. Images come from the real chest X-rays
in ../shared/data/chest_xray (224x224 JPEGs there; full-size originals decode slower).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from benchlib import print_table

from pneumo_fastai import TrainConfig, load_model
from pneumo_fastai.data.images import load_xray
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.split import limit_per_class
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


def bare_loop(exported, images: list, bs: int):
    """The bare fp32 `model(x)` loop over already normalised tensors: the ceiling to compare.

    Its own copy of the network, in the default (NCHW) memory format: the plain way.
    """
    net = copy.deepcopy(exported.learner.model).eval().to(memory_format=torch.contiguous_format)
    dl = exported.dataloader(images, bs=bs, num_workers=0)
    batches = [b[0] if isinstance(b, tuple) else b for b in dl]  # normalised, on the device

    def loop() -> None:
        with torch.inference_mode():
            for x in batches:
                net(x).softmax(dim=1)

    return loop


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
    images = [load_xray(f) for f in files]  # decoded once: both sides start from memory

    rows = []
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        card = args.model or throwaway_export(args.data, args.size, Path(tmp))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            engines = {p: load_model(card, device=device, precision=p) for p in ("fp32", "auto")}
            for bs in args.bs:
                bare = bare_loop(engines["fp32"].exported, images, bs)
                bare()  # warm-up
                t_bare = timed(bare, args.repeat)
                rows.append((device, "bare model(x) fp32", bs, len(images) / t_bare, None, 1.0))
                for name, model in engines.items():
                    plan = model.exported.plan
                    label = (
                        f"predict {name} ({plan.precision}{', NHWC' if plan.channels_last else ''})"
                    )
                    model.predict_batch(images[: 2 * bs], bs=bs)  # warm-up
                    t_mem = timed(lambda m=model, b=bs: m.predict_batch(images, bs=b), args.repeat)
                    t_file = timed(lambda m=model, b=bs: m.predict_batch(files, bs=b), args.repeat)
                    rows.append(
                        (
                            device,
                            label,
                            bs,
                            len(images) / t_mem,
                            len(files) / t_file,
                            t_bare / t_mem,
                        )
                    )

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"
    print(
        f"{len(files)} images from {args.data}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"CPU threads{gpu}"
    )
    headers = ["device", "engine", "bs", "img/s, decoded", "img/s, files", "vs bare fp32"]
    print_table(
        headers,
        [
            (d, e, bs, f"{mem:.1f}", "-" if fil is None else f"{fil:.1f}", f"{ratio:.2f}")
            for d, e, bs, mem, fil, ratio in rows
        ],
    )


if __name__ == "__main__":
    main()
