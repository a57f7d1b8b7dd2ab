"""Data loading alone (images/s): full decode, JPEG draft decode, a prepared folder, the RAM cache.

    python bench/bench_data.py                       # 300 full-size JPEGs, CPU: a few minutes
    python bench/bench_data.py --images 1000 --num-workers 8 --device cuda

First it makes `--images` full-size JPEGs (2000x1600, quality 90, light noise so that they hold
about as many bytes as real radiographs) by upscaling real X-rays from ../shared/data/chest_xray
into a temp folder in the Kaggle layout, and a prepared copy of them with
`pneumo_fastai.datatools.prepare.prepare_dataset` (PNG, shorter side `--prepare-size`).
1. decode: one process, `--decode-images` images once per run, each to a `--size` squashed image:
   full (`load_xray(path)` + resize), draft (`load_xray(path, draft=size)` + resize), prepared
   (`load_xray(png)` + resize) and cache (reads from the dict that `fill_cache` made). The one-off
   costs (preparing the folder, filling the cache) are timed apart.
2. loader: one epoch of our fastai train loader (balanced `SeededWeightedDL`, item transforms in
   `--num-workers` workers, batch augmentation on `--device`; no model) over each source, with the
   cache off and on. Training time on full-size JPEGs vs a prepared folder is then estimated for
   `--epochs` epochs: cache fill (or preparing) + epochs x epoch time.
Runs are repeated `--repeats` times in turn; the tables give medians.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from benchlib import (
    SHARED_DATA,
    load_average,
    machine_line,
    median,
    print_table,
    spread,
)
from PIL import Image

from pneumo_fastai import TrainConfig
from pneumo_fastai.data.block import build_dataloaders
from pneumo_fastai.data.cache import fill_cache
from pneumo_fastai.data.images import load_xray
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.preprocess import Preprocessing
from pneumo_fastai.data.split import limit_per_class
from pneumo_fastai.datatools.prepare import prepare_dataset
from pneumo_fastai.device import resolve_device
from pneumo_fastai.fileio import worker_count
from pneumo_fastai.training.sampling import (
    SeededWeightedDL,
    inverse_frequency_weights,
    train_labels,
)

FULL_SIZE = (2000, 1600)  # width, height: a typical digital chest radiograph


def make_full_size(sources: list[Path], root: Path, dest: Path, seed: int = 0) -> list[Path]:
    """Upscale `sources` to `FULL_SIZE` JPEGs under `dest`, keeping their path below `root`."""
    noise = np.random.default_rng(seed).normal(0, 3, FULL_SIZE[::-1]).astype(np.float32)

    def one(src: Path) -> Path:
        with Image.open(src) as img:
            big = img.convert("L").resize(FULL_SIZE, Image.BICUBIC)
        out = dest / src.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        noisy = np.clip(np.asarray(big, np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(out, quality=90)
        return out

    with ThreadPoolExecutor() as pool:
        return list(pool.map(one, sources))


def squash(img: Image.Image, size: int) -> Image.Image:
    """What the cache and the loader do after decoding: squash to `size` x `size`."""
    return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)


def decode_rate(read: Callable[[Path], Image.Image], files: list[Path], size: int) -> float:
    """Images/s of `read` + squash over `files`, one at a time."""
    start = time.perf_counter()
    for f in files:
        squash(read(f), size).load()
    return len(files) / (time.perf_counter() - start)


class TrainLoader:
    """Our balanced train loader over `files`, built once (the cache filled, when on)."""

    def __init__(self, files: list[Path], config: TrainConfig, device):
        start = time.perf_counter()
        dls = build_dataloaders(files, config, device=device, progress=False)
        self.fill_s = time.perf_counter() - start if config.cache else 0.0
        if len(dls.train_ds) < config.bs:
            raise SystemExit(
                f"{len(dls.train_ds)} train images < bs {config.bs}: use more --images"
            )
        wgts = inverse_frequency_weights(train_labels(dls))
        self.dl = dls.train.new(cls=SeededWeightedDL, wgts=wgts, seed=config.seed)
        self.device = device

    def epoch(self) -> float:
        """Images/s of one epoch: workers, collation, transfer, batch augmentation."""
        start, n = time.perf_counter(), 0
        for xb, _ in self.dl:
            n += len(xb)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    def worker_ms(self, n: int = 128) -> float:
        """CPU ms per image of what a worker does (read, item transforms, collate), in-process."""
        bs = self.dl.bs
        idxs = [i % len(self.dl.dataset) for i in range(n)]
        start = time.process_time()
        for i in range(0, n, bs):
            self.dl.create_batch([self.dl.do_item(j) for j in idxs[i : i + bs]])
        return (time.process_time() - start) * 1000 / n


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout X-rays")
    p.add_argument("--images", type=int, default=300, help="full-size JPEGs to make")
    p.add_argument("--size", type=int, default=224, help="training input side in pixels")
    p.add_argument("--prepare-size", type=int, default=256, help="shorter side of prepared PNGs")
    p.add_argument("--bs", type=int, default=32, help="batch size of the loader")
    p.add_argument("--num-workers", type=int, help="loader workers (default: cores - 1, at most 8)")
    p.add_argument("--device", default="auto", help="where batch augmentation runs")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement, in turn")
    p.add_argument("--epochs", type=int, default=25, help="epochs in the training estimate")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--decode-images", type=int, default=200, help="images in part 1 (decode)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    workers = worker_count(beside_compute=True) if args.num_workers is None else args.num_workers
    ds = discover(args.data)
    sources = limit_per_class(list(ds.files), (args.images + 1) // 2, seed=0)[: args.images]
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-data-") as tmp:
        start = time.perf_counter()
        full = make_full_size(sources, ds.root, Path(tmp) / "full")
        made_s = time.perf_counter() - start
        mb = sum(f.stat().st_size for f in full) / len(full) / 2**20
        start = time.perf_counter()
        prep = prepare_dataset(
            Path(tmp) / "full", size=args.prepare_size, out=Path(tmp) / "prep", progress=False
        )
        prepare_s = time.perf_counter() - start
        prepared = sorted(discover(prep.out).files)
        print(
            f"{len(full)} full-size JPEGs {FULL_SIZE[0]}x{FULL_SIZE[1]} ({mb:.2f} MiB each, made "
            f"in {made_s:.0f} s) from {args.data}; prepared PNG copy (shorter side "
            f"{args.prepare_size}) in {prepare_s:.1f} s ({len(prepared) / prepare_s:.0f} img/s, "
            f"default workers); input {args.size} px, bs {args.bs}, {workers} loader workers, "
            f"device {device}, {args.repeats} runs per row in turn"
        )

        if args.decode_images:
            some_full, some_prep = full[: args.decode_images], prepared[: args.decode_images]
            start = time.perf_counter()
            cache = fill_cache(some_full, Preprocessing(args.size), progress=False)
            fill_s = time.perf_counter() - start
            reads: dict[str, tuple[list[Path], Callable[[Path], Image.Image]]] = {
                "full decode: load_xray + resize": (some_full, load_xray),
                "JPEG draft: load_xray(draft) + resize": (
                    some_full, lambda f: load_xray(f, draft=args.size)
                ),
                "prepared PNG: load_xray + resize": (some_prep, load_xray),
                "RAM cache: dict read": (some_full, lambda f: cache[str(f)]),
            }  # fmt: skip
            rates: dict[str, list[float]] = {name: [] for name in reads}
            for _ in range(args.repeats):
                for name, (files, read) in reads.items():
                    rates[name].append(decode_rate(read, files, args.size))
            print(f"\n1. decode {len(some_full)} images, one process (one-off: cache fill "
                  f"{len(some_full) / fill_s:.0f} img/s with threads, prepare "
                  f"{len(prepared) / prepare_s:.0f} img/s with processes)")  # fmt: skip
            print_table(
                ["source", "img/s", "min-max", "ms/img"],
                [
                    (name, f"{median(r):.1f}", spread(r), f"{1000 / median(r):.2f}")
                    for name, r in rates.items()
                ],
            )
            del cache
            gc.collect()

        base = TrainConfig(size=args.size, bs=args.bs, num_workers=workers, device=str(device))
        setups = {
            ("full-size JPEG", "off"): full,
            ("prepared PNG", "off"): prepared,
            ("full-size JPEG", "on"): full,
            ("prepared PNG", "on"): prepared,
        }
        loaders = {
            key: TrainLoader(files, base.replace(cache=key[1] == "on"), device)
            for key, files in setups.items()
        }
        epochs: dict[tuple, list[float]] = {key: [] for key in loaders}
        worker_ms: dict[tuple, list[float]] = {key: [] for key in loaders}
        torch_threads = torch.get_num_threads()
        for _ in range(args.repeats):
            for key, loader in loaders.items():
                epochs[key].append(loader.epoch())
                torch.set_num_threads(1)  # as in a loader worker
                worker_ms[key].append(loader.worker_ms())
                torch.set_num_threads(torch_threads)
        n_train = len(full) * (1 - base.valid_pct)

        def run_s(key: tuple) -> float:
            """Estimated loading time of an `--epochs` run: cache fill + epochs x one epoch."""
            return loaders[key].fill_s + args.epochs * n_train / median(epochs[key])

        print(
            f"\n2. one epoch of the balanced train loader ({n_train:.0f} images, {workers} "
            "workers, no model); worker ms/img: CPU time of reading, item transforms and "
            "collating one image, in one process"
        )
        rows = []
        for key, loader in loaders.items():
            ref = ("prepared PNG", key[1])
            rows.append(
                (
                    *key, f"{median(epochs[key]):.1f}", spread(epochs[key]),
                    f"{median(worker_ms[key]):.2f}", f"{loader.fill_s:.1f}", f"{run_s(key):.1f}",
                    f"{run_s(key) / run_s(ref):.2f}",
                )
            )  # fmt: skip
        print_table(
            [
                "source", "cache", "img/s", "min-max", "worker ms/img", "fill s",
                f"{args.epochs}-epoch load s", "vs prepared",
            ],
            rows,
        )  # fmt: skip
        with_prepare = run_s(("prepared PNG", "on")) + prepare_s
        full_vs_prep = run_s(("full-size JPEG", "on")) / with_prepare
        print(
            f"full-size JPEGs with the default cache vs preparing a folder first and training on "
            f"it (prepare time counted): {full_vs_prep:.2f}x the loading time"
        )
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
