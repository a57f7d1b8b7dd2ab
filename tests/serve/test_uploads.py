"""`serve.uploads.Uploads`: an upload shared by requests outlives each of them, then goes."""

from __future__ import annotations

import threading
from pathlib import Path

from pneumo_fastai.serve.uploads import Uploads


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


def test_a_path_two_requests_share_stays_until_the_last_is_answered(tmp_path):
    path = _upload(tmp_path)
    uploads = Uploads(keep_s=0)
    with uploads.using([path]):
        with uploads.using([str(path)]):  # the same bytes sent again: Gradio's same path
            pass
        assert path.exists()  # the first answer must not delete the second request's file
    assert not path.exists() and not path.parent.exists()


def test_a_released_upload_waits_keep_s_and_a_new_request_takes_it_back(tmp_path):
    path, clock = _upload(tmp_path), Clock()
    uploads = Uploads(keep_s=60, clock=clock)
    with uploads.using([path, None]):
        pass
    clock.now = 59
    assert uploads.sweep() == [] and path.exists()
    with uploads.using([path]):  # a queued duplicate starts within the minute
        clock.now = 200
        assert uploads.sweep() == [] and path.exists()  # in use: never deleted
    clock.now = 259
    assert uploads.sweep() == [] and path.exists()
    clock.now = 260
    assert uploads.sweep() == [path] and not path.exists()
    assert uploads.sweep() == []


def test_the_background_sweep_deletes_uploads_of_an_idle_server(tmp_path):
    path = _upload(tmp_path)
    uploads = Uploads(keep_s=0.05)
    with uploads.using([path]):
        pass
    assert path.exists()
    uploads.sweep_every(0.05)
    deadline = threading.Event()
    for _ in range(100):
        if not path.exists():
            break
        deadline.wait(0.05)
    assert not path.exists()


def test_many_threads_sharing_paths_leave_none_behind(tmp_path):
    paths = [_upload(tmp_path, f"x{i}.png") for i in range(3)]
    uploads = Uploads(keep_s=0)

    def request(k: int) -> None:
        with uploads.using([paths[k % 3]]):
            pass

    threads = [threading.Thread(target=request, args=(k,)) for k in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any(p.exists() for p in paths)
    assert uploads.sweep() == []  # no count left behind: nothing still waiting
