"""Training throughput: our fastai pipeline vs a plain PyTorch/torchvision loop doing the same work.

    python bench/bench_train.py                      # 224 px, bs 32, CPU: a few minutes
    python bench/bench_train.py --sweep              # + workers 0/1/2 and cache on/off (ours)
    python bench/bench_train.py --device cuda --bs 256 --num-workers 8 --cache on \
        --precision bf16 --channels-last --warmup 8 --batches 30   # GPU (bench/device_run.sh)

Both pipelines train the same network on the same real X-rays (../shared/data/chest_xray), one
after the other in one process, `--repeats` times in turn. The table gives the median images/s
of the steady-state batches (after `--warmup` ones; data loading, augmentation, forward, backward
and optimiser step all inside the clock), the median over rounds of the ratio to the plain loop
run in the same round, and the CPU ms per image of the main process (its threads, not its loader
workers: steadier than wall time when other jobs share the cores).
- ours: what `train` runs: `build_dataloaders` (images squashed to `--size` as they load, one
  gray channel through the loader and our batch augmentation, 3 channels just before
  normalisation), `build_learner` with `FusedAdam`, frozen up to layer4 with a local random
  ResNet34 weights file (a stand-in for ImageNet's: speed does not depend on the values),
  `BalancedSamplingCallback` (a seeded `WeightedDL`), `fit_one_cycle` and `speed_callbacks`
  (plain tensors into the network, mixed precision, channels-last).
- plain: torchvision ResNet34 body + the same head, the same frozen layers (BatchNorm trains, as
  fastai does), a `Dataset` that opens each file with PIL as RGB and squashes it to `--size`,
  `WeightedRandomSampler`, per-image rotate/zoom/brightness-contrast with torchvision.transforms.v2
  on the 3-channel batch tensor (p=0.75 each, as fastai), ImageNet normalisation, AdamW with
  fastai's betas/eps/weight decay, `OneCycleLR`, the same label-smoothed cross-entropy and batch
  size.
`--sweep` adds our pipeline with 0, 1 and 2 loader workers (cache on) and with the cache off, at
`--sweep-size`, against a plain loop at that size.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from benchlib import (
    SHARED_DATA,
    Clock,
    load_average,
    machine_line,
    median,
    print_table,
    random_resnet34_weights,
    spread,
)
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import set_seed
from plain_loop import PlainAugment, PlainXrays
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.models import resnet34

from pneumo_fastai import TrainConfig
from pneumo_fastai.data.block import build_dataloaders, uses_cache
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.names import label_of
from pneumo_fastai.data.split import SeededSplitter, limit_per_class
from pneumo_fastai.device import resolve_compute, resolve_device
from pneumo_fastai.fileio import worker_count
from pneumo_fastai.model import STEM_TO_LAYER3, build_head, build_learner
from pneumo_fastai.training.optimizer import FusedAdam
from pneumo_fastai.training.sampling import BalancedSamplingCallback, inverse_frequency_weights
from pneumo_fastai.training.train import speed_callbacks
from pneumo_fastai.weights import imagenet_state_dict

TOO_FEW = "use more --images, a smaller --bs, or fewer --warmup/--batches"


class SteadyTimer(Callback):
    """Clocks `batches` training batches after `warmup` ones, then ends the fit."""

    order = 100  # after every callback that works on the batch

    def __init__(self, warmup: int, batches: int):
        self.warmup, self.batches = warmup, batches

    def before_fit(self) -> None:
        self.done, self.images, self.clock = 0, 0, Clock()
        self.result = (float("nan"), float("nan"))

    def after_batch(self) -> None:
        if not self.training:
            return
        self.done += 1
        if self.done == self.warmup:
            self.clock.start(self.dls.device)
        elif self.done > self.warmup:
            self.images += len(self.yb[0])
            if self.done == self.warmup + self.batches:
                self.result = self.clock.stop(self.dls.device, self.images)
                raise CancelFitException()


@dataclass
class Case:
    """One pipeline setting to time, and the images/s of each of its runs."""

    pipeline: str  # "ours" or "plain"
    config: TrainConfig
    rates: list[float] = field(default_factory=list)  # images/s
    cpu_ms: list[float] = field(default_factory=list)  # CPU ms per image (main process)
    setup_s: float = 0.0  # building loaders (cache fill included) and model
    cached: bool = False
    runner: object = None

    @property
    def workers(self) -> int:
        return (
            worker_count(beside_compute=True)
            if self.config.num_workers is None
            else self.config.num_workers
        )


class Ours:
    """Our `Learner`, built as `train` builds it, once; `run()` times one fit of a few batches."""

    def __init__(self, files, config: TrainConfig, state, device, warmup: int, batches: int):
        self.config, self.device = config, device
        dls = build_dataloaders(files, config, device=device, progress=False)
        self.cached = uses_cache(dls)
        self.learn = build_learner(dls, config, state, opt_func=FusedAdam)
        self.learn.remove_cb(ProgressCallback)
        self.timer = SteadyTimer(warmup, batches)
        self.plan = resolve_compute(device, config.precision, config.channels_last)  # as train()

    def run(self) -> tuple[float, float]:
        cbs = [
            BalancedSamplingCallback(seed=self.config.seed),
            *speed_callbacks(self.plan),
            self.timer,
        ]
        lr = self.config.lr
        self.learn.fit_one_cycle(1, lr_max=slice(lr / 10, lr), cbs=cbs)
        if self.timer.done < self.timer.warmup + self.timer.batches:
            raise SystemExit(f"only {self.timer.done} batches in an epoch: {TOO_FEW}")
        return self.timer.result


def plain_model(config: TrainConfig, state) -> nn.Sequential:
    """torchvision ResNet34 body + our head, frozen up to layer4 except BatchNorm (as fastai)."""
    net = resnet34()
    net.load_state_dict(state)
    body = nn.Sequential(*list(net.children())[:-2])
    head = build_head(config)
    for module in body[:STEM_TO_LAYER3].modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
    return nn.Sequential(body, head)


class Plain:
    """The plain PyTorch loop, built once; `run()` times a few batches of a fresh epoch."""

    def __init__(self, files, config: TrainConfig, state, device, warmup: int, batches: int):
        self.config, self.device = config, device
        self.warmup, self.batches = warmup, batches
        train_idx, _ = SeededSplitter(config.valid_pct, config.seed, config.split)(files)
        train = [files[i] for i in train_idx]
        labels = [int(label_of(f) == "PNEUMONIA") for f in train]
        self.dataset = PlainXrays(train, labels, config.size)
        self.weights = torch.as_tensor(inverse_frequency_weights(labels))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model = plain_model(config, state).to(device)
        self.plan = resolve_compute(device, config.precision, config.channels_last)  # our rule
        self.channels_last = self.plan.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.plan.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            trainable, lr=config.lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=config.wd
        )
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.augment = PlainAugment(config.max_rotate, config.max_zoom, config.max_lighting)

    def loader(self) -> DataLoader:
        sampler = WeightedRandomSampler(
            self.weights, len(self.dataset), replacement=True, generator=self.generator
        )
        workers = (
            worker_count(beside_compute=True)
            if self.config.num_workers is None
            else self.config.num_workers
        )
        return DataLoader(
            self.dataset,
            batch_size=self.config.bs,
            sampler=sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = self.augment(x.to(self.device, non_blocking=True))
        y = y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(self.model(x).float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()

    def run(self) -> tuple[float, float]:
        self.model.train()
        dl = self.loader()
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=self.config.lr, total_steps=max(len(dl), 8), pct_start=0.25
        )
        images, clock = 0, Clock()
        for i, (x, y) in enumerate(dl, start=1):
            self.step(x, y)
            if i == self.warmup:
                clock.start(self.device)
            elif i > self.warmup:
                images += len(y)
                if i == self.warmup + self.batches:
                    return clock.stop(self.device, images)
        raise SystemExit(f"only {len(dl)} batches in an epoch: {TOO_FEW}")


def augmentation_ms(ours: Ours, plain: Plain, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """(wall ms, CPU ms) per batch of each loop's batch augmentation alone, on one uint8 batch.

    Each loop's own batch: one gray channel for ours, 3 channels for the plain loop.
    """
    dl = ours.learn.dls.train
    xb, yb = dl.create_batch([dl.do_item(i) for i in range(dl.bs)])
    raw = torch.stack([plain.dataset[i][0] for i in range(dl.bs)]).to(ours.device)
    fastai_batch = (xb.to(ours.device), yb.to(ours.device))
    work = {"ours": lambda: dl.after_batch(fastai_batch), "plain": lambda: plain.augment(raw)}
    out = {}
    for name, fn in work.items():
        fn()  # warm-up
        clock = Clock()
        clock.start(ours.device)
        for _ in range(repeats):
            fn()
        rate, cpu_ms = clock.stop(ours.device, repeats)
        out[name] = (1000 / rate, cpu_ms)
    return out


def build(case: Case, files, state, device, warmup: int, batches: int) -> None:
    """Make the case's runner, timing the setup (loaders, cache fill, model)."""
    start = time.perf_counter()
    if case.pipeline == "ours":
        case.runner = Ours(files, case.config, state, device, warmup, batches)
    else:
        case.runner = Plain(files, case.config, state, device, warmup, batches)
    case.cached = getattr(case.runner, "cached", False)
    case.setup_s = time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout X-rays")
    p.add_argument("--images", type=int, help="use at most this many images (default: all)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--bs", type=int, default=32, help="batch size")
    p.add_argument("--warmup", type=int, default=1, help="batches before the clock starts")
    p.add_argument("--batches", type=int, default=2, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per case, in turn; median kept")
    p.add_argument("--num-workers", type=int, help="loader workers (default: cores - 1, at most 8)")
    p.add_argument(
        "--cache", choices=["auto", "on", "off"], default="auto", help="RAM cache (ours)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (both loops)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory format for both (default: on CUDA only)",
    )
    p.add_argument(
        "--axis",
        action="store_true",
        help="also both loops at every precision x memory format (fp32/bf16, NCHW/NHWC)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--sweep", action="store_true", help="also ours with workers 0/1/2, cache off")
    p.add_argument("--sweep-size", type=int, default=128, help="input side for the sweep")
    p.add_argument(
        "--sweep-workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to sweep"
    )
    p.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="cudnn autotuning (train() runs with set_seed(reproducible=True), which turns it off)",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = {"auto": None, "on": True, "off": False}[args.cache]
    device = resolve_device(args.device)
    files = list(discover(args.data).files)
    if args.images:
        files = limit_per_class(files, (args.images + 1) // 2, seed=0)[: args.images]
    base = TrainConfig(
        data=args.data, size=args.size, bs=args.bs, num_workers=args.num_workers, cache=cache,
        precision=args.precision, channels_last=args.channels_last, device=str(device),
    )  # fmt: skip
    cases = [Case("ours", base), Case("plain", base)]
    if args.axis:
        grid = [(p, nhwc) for p in ("fp32", "bf16") for nhwc in (False, True)]
        cases = [Case("plain", base.replace(precision="fp32", channels_last=False))]
        cases += [Case(side, base.replace(precision=p, channels_last=nhwc))
                  for side in ("ours", "plain") for p, nhwc in grid[side == "plain":]]  # fmt: skip
    if args.sweep:
        small = base.replace(size=args.sweep_size)
        if args.sweep_size != args.size:
            cases += [Case("plain", small)]
        cases += [
            Case("ours", small.replace(num_workers=n, cache=True)) for n in args.sweep_workers
        ]
        cases += [Case("ours", small.replace(cache=False))]

    print(machine_line())
    print(
        f"{len(files)} images from {args.data}; bs {args.bs}; {args.warmup} warm-up + "
        f"{args.batches} timed batches per run, {args.repeats} runs per case in turn; "
        f"device {device}, precision {args.precision}, channels-last {args.channels_last}"
    )
    set_seed(base.seed, reproducible=not args.cudnn_benchmark)  # what train() does
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as tmp:
        state = imagenet_state_dict(random_resnet34_weights(Path(tmp)))
        for case in cases:
            build(case, files, state, device, args.warmup, args.batches)
        for _ in range(args.repeats):
            for case in cases:
                rate, cpu_ms = case.runner.run()
                case.rates.append(rate)
                case.cpu_ms.append(cpu_ms)
                gc.collect()

    # the yardstick at each size: the first plain case there (with --axis, plain fp32 NCHW)
    plain = {c.config.size: c.rates for c in reversed(cases) if c.pipeline == "plain"}

    def vs_plain(case: Case) -> float:
        """Median over rounds of this case's images/s over the plain loop's in the same round."""
        return median([r / p for r, p in zip(case.rates, plain[case.config.size], strict=True)])

    rows = [
        (
            c.pipeline, c.config.size,
            c.runner.plan.precision, "NHWC" if c.runner.plan.channels_last else "NCHW", c.workers,
            "on" if c.cached else "off", f"{median(c.rates):.2f}", spread(c.rates),
            f"{vs_plain(c):.2f}", f"{median(c.cpu_ms):.0f}",
            f"{c.setup_s:.1f}",
        )
        for c in cases
    ]  # fmt: skip
    headers = ["pipeline", "size", "precision", "memory", "workers", "cache", "img/s", "min-max"]
    headers.append("vs plain")
    print_table([*headers, "CPU ms/img", "setup s"], rows)
    first = {s: next(c.runner for c in cases if c.pipeline == s) for s in ("ours", "plain")}
    aug = augmentation_ms(first["ours"], first["plain"])
    print(
        "batch augmentation alone, one batch (wall ms / CPU ms): "
        + ", ".join(f"{name} {wall:.0f} / {cpu:.0f}" for name, (wall, cpu) in aug.items())
    )
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
