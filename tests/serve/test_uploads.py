"""`serve.uploads`: an upload sent by several requests outlives each of them but the last."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from pneumo_fastai.serve.uploads import CountUploads, Uploads


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _upload(tmp_path: Path, name: str = "x.png") -> Path:
    """A file where Gradio keeps an upload: a folder named by its bytes' hash."""
    folder = tmp_path / "cache" / "0123abcd"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"bytes")
    return path


def test_a_file_two_clients_sent_stays_until_the_second_request_is_answered(tmp_path):
    path = _upload(tmp_path)
    uploads = Uploads()
    uploads.arrived([str(path)])
    uploads.arrived([str(path)])  # the same bytes again: Gradio's same path
    with uploads.using([path]):
        pass
    assert path.exists()  # the second request, still in the queue, will read it
    with uploads.using([path]):
        pass
    assert not path.exists() and not path.parent.exists()


def test_an_uncounted_request_deletes_its_file_when_answered(tmp_path):
    path = _upload(tmp_path)
    with Uploads().using([path, None]):
        assert path.exists()
    assert not path.exists()


def test_an_upload_no_request_takes_is_swept_after_abandoned_s(tmp_path):
    path, clock = _upload(tmp_path), Clock()
    uploads = Uploads(abandoned_s=600, clock=clock)
    uploads.arrived([path, path])
    with uploads.using([path]):
        clock.now = 700
        assert uploads.sweep() == [] and path.exists()  # in use: never deleted
    assert path.exists()  # one upload is still waiting for its request...
    uploads.arrived([path])  # ...and a new one comes in: abandoned_s counts from the last
    clock.now = 1299
    assert uploads.sweep() == [] and path.exists()
    clock.now = 1300
    assert uploads.sweep() == [path] and not path.exists()


def test_the_background_sweep_runs_on_an_idle_server(tmp_path):
    path = _upload(tmp_path)
    uploads = Uploads(abandoned_s=0.05)
    uploads.arrived([path])
    uploads.sweep_every(0.05)
    for _ in range(100):
        if not path.exists():
            break
        threading.Event().wait(0.05)
    assert not path.exists()


def test_threads_sharing_paths_find_them_and_leave_none_behind(tmp_path):
    paths = [_upload(tmp_path, f"x{i}.png") for i in range(3)]
    uploads = Uploads()
    for k in range(60):
        uploads.arrived([paths[k % 3]])
    missing = []

    def request(k: int) -> None:
        with uploads.using([paths[k % 3]]):
            if not paths[k % 3].exists():
                missing.append(k)

    threads = [threading.Thread(target=request, args=(k,)) for k in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert missing == [] and not any(p.exists() for p in paths)


def _asgi_call(app, path: str, method: str = "POST") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path}
    asyncio.run(app(scope, receive, send))
    return sent


def test_the_middleware_counts_what_the_upload_route_stored(tmp_path):
    path = _upload(tmp_path)
    answer = json.dumps([str(path)]).encode()

    async def gradio(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer[:5], "more_body": True})
        await send({"type": "http.response.body", "body": answer[5:]})

    uploads = Uploads()
    app = CountUploads(gradio, uploads)
    sent = _asgi_call(app, "/gradio_api/upload")
    assert b"".join(m.get("body", b"") for m in sent) == answer  # passed on unchanged
    _asgi_call(app, "/gradio_api/upload")  # a second client sends the same bytes
    _asgi_call(app, "/gradio_api/queue/join")  # other routes and methods are not uploads
    _asgi_call(app, "/gradio_api/upload", method="GET")
    with uploads.using([path]):
        pass
    assert path.exists()  # counted twice: the second request has not been answered
    with uploads.using([path]):
        pass
    assert not path.exists()  # and not more than twice
