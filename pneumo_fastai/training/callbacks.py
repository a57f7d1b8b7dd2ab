"""Training callbacks fastai lacks: best-epoch bookkeeping, a graceful stop on Ctrl-C/SIGTERM,
mixed precision on the learner's own device (fastai's `MixedPrecision` autocasts CUDA only), and
plain tensors into the model."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.hook import hook_output
from fastai.callback.progress import CSVLogger
from fastai.callback.tracker import SaveModelCallback
from fastcore.foundation import L
from torch import nn
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


class BestEpochPredictions(Callback):
    """The validation logits and labels of the epoch `best` kept, gathered as metrics are.

    The best epoch's own validation pass already predicted every validation image with the
    weights that `best` restores at the end, so calibration and the threshold need no extra pass.
    """

    order = SaveBestModel.order + 1  # after `best` has decided whether this epoch is the best

    def __init__(
        self,
        best: SaveBestModel,  # the callback that saves and restores the best epoch
        pooled: nn.Module | None = None,  # also keep this module's outputs (OOD features)
    ):
        self.best, self.pooled = best, pooled
        self.logits: torch.Tensor | None = None  # (n_valid, n_classes), fp32
        self.targs: torch.Tensor | None = None  # (n_valid,)
        self.features: torch.Tensor | None = None  # (n_valid, d) when `pooled` is given

    def before_validate(self) -> None:
        self.batch_preds: list[torch.Tensor] = []
        self.batch_targs: list[torch.Tensor] = []
        self.batch_feats: list[torch.Tensor] = []
        # the learner detaches (and gathers, across processes) what the hook stored, as `pred`
        self.hook = None if self.pooled is None else hook_output(self.pooled, detach=False)

    def after_validate(self) -> None:
        if self.hook is not None:
            self.hook.remove()

    def after_batch(self) -> None:
        if not self.training:
            self.batch_preds.append(self.learn.to_detach(self.pred).float())
            self.batch_targs.append(self.learn.to_detach(self.yb[0]))
            if self.hook is not None:
                self.batch_feats.append(self.learn.to_detach(self.hook.stored).float())

    def after_epoch(self) -> None:
        if self.best.new_best:
            self.logits = torch.cat(self.batch_preds)
            self.targs = torch.cat(self.batch_targs)
            if self.batch_feats:
                self.features = torch.cat(self.batch_feats)


class ProgressiveResize(Callback):
    """fastai's progressive resizing within one fit: early epochs train on smaller batches.

    For the first `fraction` of the epochs every training batch is resized to `scale` of its
    side (bilinear, antialiased) before the forward pass: about `scale`**2 of the compute, while
    the network (average-pooled) learns coarse features first. Validation always runs full size.
    """

    order = 60  # after the batch transforms have run (they are the loader's)

    def __init__(self, fraction: float, scale: float = 0.5):
        self.fraction, self.scale = fraction, scale

    def before_batch(self) -> None:
        if self.training and self.epoch < round(self.n_epoch * self.fraction):
            x = self.xb[0]
            small = F.interpolate(
                x.as_subclass(torch.Tensor), scale_factor=self.scale, mode="bilinear",
                antialias=True, align_corners=False,
            )  # fmt: skip
            self.learn.xb = (type(x)(small), *self.xb[1:])


class PlainTensorInputs(Callback):
    """Hand the network plain `torch.Tensor` batches instead of fastai's `TensorImage`.

    A fastai tensor subclass carries its type through every layer, and each of the network's
    operations then goes through `TensorBase.__torch_function__` in Python: about a sixth of a
    128 px ResNet34 forward pass on a 2-core CPU. Losses, metrics and the callbacks after this
    one need no subclass.
    """

    order = ProgressiveResize.order + 1  # after every callback that edits the batch

    def before_batch(self) -> None:
        self.learn.xb = tuple(x.as_subclass(torch.Tensor) for x in self.xb)
        self.learn.yb = tuple(y.as_subclass(torch.Tensor) for y in self.yb)


class EpochLog(Callback):
    """fastai's epoch table as plain lines through `log`, where no progress bar is shown.

    On a terminal fastai's `ProgressCallback` draws bars and the table; in a log file its bars
    would write a line per batch. This writes the header once, then one line per epoch.
    """

    order = CSVLogger.order - 1  # sets the logger that fastai's CSVLogger then chains to

    def __init__(self, log: Callable[[str], None]):  # where each line goes
        self.log = log

    def before_fit(self) -> None:
        self.widths = [max(len(name), 8) for name in self.recorder.metric_names]
        self.log(self._row(self.recorder.metric_names))
        self.learn.logger = self._write

    def _write(self, values: list) -> None:
        self.log(self._row([f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]))

    def _row(self, cells: list) -> str:
        return "  ".join(str(c).rjust(w) for c, w in zip(cells, self.widths, strict=False))


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
