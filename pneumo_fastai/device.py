"""Where a model runs and in what precision: one rule for training and for every torch inference.

    device = resolve_device("auto")            # CUDA when visible, else the CPU
    plan = resolve_compute(device, "auto")     # precision and memory format for that device
    with autocast(device, plan.precision): logits = model(x)

`auto` means: on CUDA, bf16 mixed precision (fp16 on GPUs without bf16) and channels-last; on a
CPU, bf16 autocast only where the CPU has bf16 instructions (AVX512-BF16 or AMX) *and* a short
timed probe confirms that bf16 runs faster than fp32 there, else fp32; channels-last on a CPU
where the probe finds it faster at the chosen precision. The probe runs once per process, when a
command first asks (never at import or for `--help`), and takes well under a second.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .errors import PneumoError

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
PROBE_MARGIN = 1.1  # a faster path must win by 10 %, so that timing noise does not flip it
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise PneumoError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PneumoError(
            f"Device {name!r} asked for, but no CUDA GPU is visible; use --device cpu."
        )
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def _probe_seconds(precision: str, channels_last: bool, training: bool) -> float:
    """Best time of a small conv block step on the CPU at `precision` and memory format."""
    block = torch.nn.Sequential(
        torch.nn.Conv2d(64, 64, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1, bias=False),
    )
    x = torch.randn(8, 64, 28, 28)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    best = float("inf")
    for _ in range(4):  # the first is a warm-up
        start = time.perf_counter()
        with torch.set_grad_enabled(training), autocast(torch.device("cpu"), precision):
            out = block(x).float().sum()
        if training:
            out.backward()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_probe(training: bool = True) -> dict[tuple[str, bool], float]:
    """Seconds of one probe step per (precision, channels-last) this CPU can run natively.

    The probe draws its random weights and inputs from a forked generator, so a seeded run
    gives the same model whether or not the probe ran.
    """
    precisions = ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)
    configs = [(p, nhwc) for p in precisions for nhwc in (False, True)]
    with torch.random.fork_rng(devices=[]):
        return {c: _probe_seconds(*c, training) for c in configs}


@dataclass(frozen=True)
class ComputePlan:
    """How a model runs on a device: autocast precision and memory format."""

    precision: str  # fp32, bf16 or fp16
    channels_last: bool  # NHWC memory format for the model and its inputs
    reason: str  # one line saying why, for logs and the model card


def resolve_compute(
    device: torch.device,
    precision: str = "auto",  # auto, fp32, bf16 or fp16
    channels_last: bool | None = None,  # None: by the rule for the device
    training: bool = True,  # whether the probe should time a backward pass too
    probe: Callable[[bool], dict[tuple[str, bool], float]] = cpu_probe,  # injected in tests
) -> ComputePlan:
    """The precision and memory format to run with on `device` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise PneumoError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if device.type == "cuda":
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        nhwc = True if channels_last is None else channels_last
        return ComputePlan(precision, nhwc, f"CUDA: {precision} mixed precision")
    if precision == "fp16":
        raise PneumoError(
            "--precision fp16 needs a CUDA GPU: float16 autocast is neither supported for "
            "training nor fast on a CPU. Use --precision bf16, fp32 or auto on the CPU."
        )
    if device.type != "cpu":
        if precision not in ("auto", "fp32"):
            raise PneumoError(f"--precision {precision} runs on CPU and CUDA, not on {device}.")
        return ComputePlan("fp32", bool(channels_last), f"{device.type}: fp32")
    times = probe(training) if precision == "auto" or channels_last is None else {}
    if precision == "auto":
        fp32 = min(times[("fp32", False)], times[("fp32", True)])
        bf16 = min(times.get(("bf16", False), math.inf), times.get(("bf16", True), math.inf))
        precision = "bf16" if bf16 < fp32 / PROBE_MARGIN else "fp32"
        reason = (
            "CPU with bf16 instructions, bf16 measured faster than fp32"
            if precision == "bf16"
            else "CPU without bf16 instructions: fp32"
            if ("bf16", False) not in times
            else "CPU with bf16 instructions, but fp32 measured faster"
        )
    else:
        reason = f"CPU, --precision {precision} as asked"
    if channels_last is None:
        nchw, nhwc = times.get((precision, False)), times.get((precision, True))
        channels_last = nchw is not None and nhwc is not None and nhwc < nchw / PROBE_MARGIN
    return ComputePlan(precision, channels_last, reason)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """`torch.autocast` for `precision` on `device`'s type; a no-op for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])
