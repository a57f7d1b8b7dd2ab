"""Training callbacks fastai lacks: best-epoch bookkeeping and a graceful stop on Ctrl-C/SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import SaveModelCallback


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
