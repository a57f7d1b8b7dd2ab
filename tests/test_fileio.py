"""Atomic and staged writes, sha256, and the worker-count rule."""

import hashlib
import os

import pytest

from pneumo_fastai import fileio
from pneumo_fastai.fileio import atomic_path, sha256_file, staged_files, worker_count


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    a, b = tmp_path / "out" / "a.txt", tmp_path / "out" / "b.txt"
    with pytest.raises(RuntimeError), staged_files(a.parent, [a, b]) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
        raise RuntimeError("a writer failed half-way")
    assert list(a.parent.iterdir()) == [], "nothing renamed, no temp file left"
    with staged_files(a.parent, [a, b]) as (ta, tb):
        ta.write_text("a")
        tb.write_text("b")
        assert not a.exists(), "finals appear only when the block completes"
    assert a.read_text() == "a" and b.read_text() == "b"
    assert sorted(p.name for p in a.parent.iterdir()) == ["a.txt", "b.txt"]


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "metrics.json"
    fileio.write_text_atomic(target, "old")
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    mode = target.stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_sha256_file_matches_hashlib_and_reports_progress(tmp_path):
    data = os.urandom(3 * fileio.CHUNK + 5)
    (path := tmp_path / "blob").write_bytes(data)
    seen = []
    assert sha256_file(path, progress=seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and len(seen) == 4


@pytest.mark.parametrize(
    ("cores", "waiting", "beside"), [(1, 1, 0), (2, 2, 1), (4, 4, 3), (64, 8, 8), (None, 1, 0)]
)
def test_worker_count_leaves_a_core_to_a_computing_process(monkeypatch, cores, waiting, beside):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert worker_count(beside_compute=False) == waiting
    assert worker_count(beside_compute=True) == beside
