"""`--gpus N`: start `pneumo-fastai train` once per GPU of this machine through Accelerate.

Only `check_gpus` touches torch (to count GPUs), and only when `--gpus` is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from ..errors import PneumoError
from ..training.ranks import is_distributed

ACCELERATE_LAUNCH = ("-m", "accelerate.commands.launch")


def strip_option(args: Sequence[str], option: str) -> list[str]:
    """`args` without `option VALUE` or `option=VALUE`."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(f"{option}="):
            out.append(a)
    return out


def gpus_launch_command(n: int, args: Sequence[str]) -> list[str]:
    """The `accelerate launch` command that runs `pneumo-fastai ARGS` (minus `--gpus`) on n GPUs."""
    return [
        sys.executable, *ACCELERATE_LAUNCH,
        "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
        "--main_process_port", "0",  # a free port: two runs on one machine do not collide
        "--mixed_precision", "no",  # precision is `--precision`, applied by fastai in each process
        "--dynamo_backend", "no",
        "-m", "pneumo_fastai.cli", *strip_option(args, "--gpus"),
    ]  # fmt: skip


def check_gpus(n: int, device: str) -> None:
    """Refuse `--gpus n` where it cannot work: under a launcher, on CPU, or with too few GPUs."""
    if n < 1:
        raise PneumoError(f"--gpus must be at least 1, got {n}.")
    if is_distributed():
        raise PneumoError(
            "--gpus starts its own processes; leave it out under accelerate launch or torchrun."
        )
    if device not in ("auto", "cuda"):
        raise PneumoError(
            f"--gpus trains on CUDA GPUs; it cannot be combined with --device {device}."
        )
    import torch

    visible = torch.cuda.device_count()
    if visible < n:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        raise PneumoError(
            f"--gpus {n} asks for {n} CUDA GPU(s), but this machine shows {visible}{where}. "
            "Use fewer, or drop --gpus to train in one process (CPU works too)."
        )


def launch_on_gpus(n: int, args: Sequence[str]) -> int:
    """Run `pneumo-fastai ARGS` as n processes, one per GPU, through Accelerate; its exit status."""
    return subprocess.call(gpus_launch_command(n, args))
