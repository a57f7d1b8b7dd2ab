"""Uploads in use, and when they go: the one rule for deleting what `serve` was sent.

Gradio stores an upload under a folder named by the hash of its bytes, so two requests that send
the same file get the same path on the server. Deleting it as soon as one request is answered
fails the other one ("no such file") while it waits in the queue or is being read. `Uploads`
counts the requests using each path; once none is, the path waits `keep_s` seconds (for a
duplicate still in the queue) and is deleted by the next `sweep`: at the end of every request and
every `keep_s` seconds from a background thread. With `keep_s=0` it is deleted at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

KEEP_UPLOADS_S = 60.0  # `serve --keep-uploads`'s default: a queued duplicate waits less than this


def delete_upload(path: Path) -> None:
    """Delete an uploaded file and the folder Gradio made for it, once that folder is empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or already gone
        path.parent.rmdir()


class Uploads:
    """The uploads requests are using, and those waiting to be deleted (thread-safe)."""

    def __init__(self, keep_s: float, clock: Callable[[], float] = time.monotonic):
        self.keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()
        self._users: Counter[Path] = Counter()
        self._released: dict[Path, float] = {}  # path -> when its last user finished

    @contextlib.contextmanager
    def using(self, paths: Iterable[str | Path | None]) -> Iterator[None]:
        """Hold `paths` (None entries skipped) for one request; release them when it ends."""
        held = [Path(p) for p in paths if p is not None]
        with self._lock:
            for p in held:
                self._users[p] += 1
                self._released.pop(p, None)
        try:
            yield
        finally:
            self.release(held)

    def release(self, paths: Iterable[Path]) -> None:
        """One request is done with `paths`: each is deleted `keep_s` after its last user."""
        now = self._clock()
        with self._lock:
            for p in paths:
                self._users[p] -= 1
                if self._users[p] <= 0:
                    del self._users[p]
                    self._released[p] = now
        self.sweep()

    def sweep(self) -> list[Path]:
        """Delete the released uploads whose time is up; the paths deleted."""
        now = self._clock()
        with self._lock:
            due = [p for p, t in self._released.items() if now - t >= self.keep_s]
            for p in due:
                del self._released[p]
                delete_upload(p)  # under the lock: a request cannot take it back meanwhile
        return due

    def sweep_every(self, seconds: float) -> threading.Thread:
        """Start a daemon thread that sweeps every `seconds` (for a server with no requests)."""

        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.sweep()

        thread = threading.Thread(target=loop, name="uploads-sweep", daemon=True)
        thread.start()
        return thread
