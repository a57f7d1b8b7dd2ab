"""The hardware limit: a bare ResNet34 + head train step and inference pass on fixed tensors.

    python bench/bare_step.py --size 128 --precision bf16 --channels-last
    python bench/bare_step.py --size 128 --precision bf16 --channels-last --compile

No data loading, no augmentation, no framework: `model(x)`, the loss, `backward`, torch's fused
AdamW, on one random batch, after warm-up steps. Inference is `model(x)` under
`torch.inference_mode` at the validation batch size. With `--compile` the model is wrapped in
`torch.compile` (inductor) first, and the compile time (the first steps) is reported on its own,
cold: inductor's cache goes to a fresh temporary folder, so an earlier run's kernels do not hide
what a user's first run pays. Prints one JSON line: train and inference images per second, and
the seconds of the first steps (the compile, with `--compile`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.model import build_model


def _rate(fn, bs: int, seconds: float) -> float:
    """Images per second of `fn` (one batch per call) over at least `seconds`."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n * bs / (time.perf_counter() - start)


def measure(size: int, bs: int, precision: str, channels_last: bool, compile_: bool,
            seconds: float) -> dict[str, float]:  # fmt: skip
    """Train and inference images per second of the bare network (and compile seconds)."""
    torch.manual_seed(0)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = build_model(TrainConfig(size=size)).to(memory_format=memory)
    model = torch.compile(net) if compile_ else net
    x = torch.randn(bs, 3, size, size).contiguous(memory_format=memory)
    y = torch.randint(0, 2, (bs,))
    xv = torch.randn(2 * bs, 3, size, size).contiguous(memory_format=memory)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, betas=(0.9, 0.99), eps=1e-5, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    amp = {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": precision == "bf16"}

    def step() -> None:
        with torch.autocast(**amp):
            out = model(x)
        loss_fn(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer() -> None:
        with torch.inference_mode(), torch.autocast(**amp):
            model(xv)

    model.train()
    start = time.perf_counter()
    for _ in range(2):  # warm-up, and the compile when asked
        step()
    train_warmup = time.perf_counter() - start
    train = _rate(step, bs, seconds)
    model.eval()
    start = time.perf_counter()
    infer()
    infer_warmup = time.perf_counter() - start
    inference = _rate(infer, 2 * bs, seconds / 2)
    return {
        "train_img_s": train,
        "infer_img_s": inference,
        "train_first_steps_s": train_warmup,
        "infer_first_batch_s": infer_warmup,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile (inductor) the model")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds of training steps")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pneumo-inductor-") as cache:
        # read when inductor first compiles, so setting it here is in time
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        figures = measure(
            args.size, args.bs, args.precision, args.channels_last, args.compile, args.seconds
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
