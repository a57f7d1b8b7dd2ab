"""Training callbacks fastai lacks: best-epoch bookkeeping, a graceful stop on Ctrl-C/SIGTERM,
and mixed precision on the learner's own device (fastai's `MixedPrecision` autocasts CUDA only)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.tracker import SaveModelCallback
from fastcore.foundation import L
from torch.amp import GradScaler, autocast


class SaveBestModel(SaveModelCallback):
    """fastai's `SaveModelCallback`, remembering the best epoch; restores only what it saved."""

    def before_fit(self) -> None:
        super().before_fit()
        self.best_epoch: int | None = None

    def after_epoch(self) -> None:
        super().after_epoch()
        if self.new_best:
            self.best_epoch = self.epoch

    def after_fit(self, **kwargs) -> None:
        if self.best_epoch is not None:
            super().after_fit(**kwargs)


class GracefulStop(Callback):
    """Ends `fit` after the current batch once `request()` was called (by a signal handler)."""

    order = 100

    def __init__(self):
        self.requested = False
        self.stopped_at_epoch: int | None = None

    def request(self) -> None:
        """Ask training to stop at the next batch boundary."""
        self.requested = True

    def after_batch(self) -> None:
        if self.requested:
            self.stopped_at_epoch = self.epoch
            raise CancelFitException()


@contextmanager
def stop_on_signals(stopper: GracefulStop) -> Iterator[None]:
    """First SIGINT/SIGTERM asks `stopper` to stop cleanly; a second aborts (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame) -> None:
        if stopper.requested:
            raise KeyboardInterrupt
        stopper.request()
        print(
            f"\n{signal.Signals(signum).name}: stopping after this batch and exporting the best "
            "model so far. Press Ctrl-C again to abort without exporting.",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class DeviceMixedPrecision(MixedPrecision):
    """fastai's `MixedPrecision`, autocasting on the device the learner's data lives on.

    bf16 runs on CUDA and on CPUs (no gradient scaling: bf16 has fp32's range); fp16 only on
    CUDA, with fastai's gradient scaler. Predictions are cast back to fp32 before the loss.
    """

    def before_fit(self) -> None:
        device = torch.device(getattr(self.dls, "device", None) or "cpu").type
        dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
        if dtype == torch.float16 and device != "cuda":
            raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 on the CPU")
        self.kwargs["enabled"] = dtype == torch.float16
        self.autocast = autocast(device, dtype=dtype)
        self.learn.scaler = GradScaler(device, **self.kwargs)
        self.scales = L()
