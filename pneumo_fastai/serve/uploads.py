"""Uploads and when they go: the one rule for deleting what `serve` was sent.

Gradio stores an upload under a folder named by the hash of its bytes, so requests that send the
same file share one path on the server, and deleting it as soon as one request is answered
fails the others ("no such file") while they wait in the queue. So `Uploads` counts, per path,
the uploads Gradio's upload route stored (`CountUploads`, an ASGI middleware, reads its answer)
and the requests using the path, and deletes the file when the last request that was sent it is
answered. An upload no request ever uses (a client that went away) is deleted `abandoned_s`
after it arrived, by a background sweep.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ABANDONED_S = 600.0  # an upload no request has used for this long is deleted
UPLOAD_ROUTE = "/upload"  # the end of the path of Gradio's upload route (/gradio_api/upload)


def delete_upload(path: Path) -> None:
    """Delete an uploaded file and the folder Gradio made for it, once that folder is empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or already gone
        path.parent.rmdir()


class Uploads:
    """Per uploaded path: uploads not yet used by a request, and requests using it (thread-safe)."""

    def __init__(
        self, abandoned_s: float = ABANDONED_S, clock: Callable[[], float] = time.monotonic
    ):
        self.abandoned_s = abandoned_s
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: Counter[Path] = Counter()  # uploads stored, no request has taken yet
        self._users: Counter[Path] = Counter()  # requests reading the path now
        self._arrived: dict[Path, float] = {}  # when the path's last upload was stored

    def arrived(self, paths: Iterable[str | Path]) -> None:
        """Gradio stored an upload at each of `paths`; a request will use it."""
        now = self._clock()
        with self._lock:
            for p in map(Path, paths):
                self._waiting[p] += 1
                self._arrived[p] = now

    @contextlib.contextmanager
    def using(self, paths: Iterable[str | Path | None]) -> Iterator[None]:
        """Hold `paths` (None entries skipped) for one request; each is deleted when the last
        request that was sent it is answered."""
        held = [Path(p) for p in paths if p is not None]
        with self._lock:
            for p in held:
                if self._waiting[p] > 0:
                    self._waiting[p] -= 1
                self._users[p] += 1
        try:
            yield
        finally:
            with self._lock:
                for p in held:
                    self._users[p] -= 1
                    self._delete_if_unused(p)

    def sweep(self) -> list[Path]:
        """Delete uploads that arrived `abandoned_s` ago and that no request is using."""
        now = self._clock()
        with self._lock:
            stale = [p for p, t in self._arrived.items() if now - t >= self.abandoned_s]
            gone = [p for p in stale if self._users[p] <= 0]
            for p in gone:
                self._waiting[p] = 0
                self._delete_if_unused(p)
        return gone

    def _delete_if_unused(self, path: Path) -> None:
        """Under the lock: delete `path` when no request uses it and no upload of it waits."""
        if self._users[path] <= 0 and self._waiting[path] <= 0:
            del self._users[path], self._waiting[path]
            self._arrived.pop(path, None)
            delete_upload(path)

    def sweep_every(self, seconds: float) -> threading.Thread:
        """Start a daemon thread that sweeps every `seconds`."""

        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.sweep()

        thread = threading.Thread(target=loop, name="uploads-sweep", daemon=True)
        thread.start()
        return thread


class CountUploads:
    """ASGI middleware: tells `uploads` of each file Gradio's upload route stores, from the JSON
    list of paths it answers, before that answer reaches the client."""

    def __init__(self, app: Any, uploads: Uploads):
        self.app, self.uploads = app, uploads

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith(UPLOAD_ROUTE)
        ):
            await self.app(scope, receive, send)
            return
        status, body = [0], bytearray()

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if status[0] == 200 and not message.get("more_body", False):
                    self.uploads.arrived(json.loads(body))
            await send(message)

        await self.app(scope, receive, counted)
