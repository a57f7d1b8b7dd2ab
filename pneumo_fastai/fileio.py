"""File rules every stage shares: atomic writes, staged multi-file writes, sha256, worker counts,
and the names files may be given.

    from pneumo_fastai.fileio import atomic_path, sha256_file, write_text_atomic
    write_text_atomic(Path("reports/x/metrics.json"), text)   # temp file, then rename
    with staged_files(folder, [a, b]) as (tmp_a, tmp_b): ...  # both renamed, or neither

A reader never sees a half-written file: everything is written under a hidden temporary name in
the target's folder (same filesystem, so the rename is atomic) and renamed into place only when
complete. Nothing here imports torch or fastai.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError, PneumoError

CHUNK = 1 << 20  # bytes read at a time when hashing
MAX_WORKERS = 8  # decoding and loading stop scaling well before this on the machines we measured
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # an export's base name


def check_name(name: str, option: str = "--name") -> str:
    """`name` if it can be an export's base name (NAME.json, NAME.pkl, ...), else PneumoError.

    Letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 100: no folder
    separators, no `..`, nothing a shell or another file system would read differently.
    """
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name) or name.endswith("."):
        raise PneumoError(
            f"{option} {name!r} cannot name an export's files: use letters, digits, '.', '_' and "
            "'-' (at most 100, starting with a letter or digit), e.g. pneumo_resnet34. Choose "
            "the folder with --exports."
        )
    return name


def read_csv_rows(path: Path, what: str) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV with a header line; `DataError` naming `what` if it is unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{what} {path} is not a readable CSV ({e}).") from e


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk (a rename alone may reach it first)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the renames into it) to the disk, where the OS allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


@contextmanager
def temps_beside(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """A hidden temp path beside each of `finals`; any still there at the end are removed.

    The caller renames them (see `card.switch_export`); nothing is renamed here.
    """
    mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give them the usual permissions
    temps = []
    try:
        for final in map(Path, finals):
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            os.chmod(tmp, mode)
            temps.append(Path(tmp))
        yield temps
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def staged_files(folder: Path, finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Temp paths beside `finals`; all are renamed onto them only if the block completes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give them the usual permissions
    temps = []
    try:
        for final in finals:
            fd, tmp = tempfile.mkstemp(prefix=f".{Path(final).name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            os.chmod(tmp, mode)
            temps.append(Path(tmp))
        yield temps
        for tmp, final in zip(temps, finals, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temp path beside `final`, renamed onto it when the block completes."""
    final = Path(final)
    with staged_files(final.parent, [final]) as (tmp,):
        yield tmp


def write_text_atomic(path: Path, text: str, sync: bool = False) -> Path:
    """Write `text` to `path` through a temp file and a rename (`sync`: flushed to disk before
    the rename); returns `path`."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)
        if sync:
            fsync_file(tmp)
    return Path(path)


def sha256_file(
    path: Path,
    progress: Callable[[int], None] | None = None,  # called with the bytes of each chunk read
) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def worker_count(beside_compute: bool) -> int:
    """Parallel workers for decoding or loading images: one per core, at most `MAX_WORKERS`.

    `beside_compute`: the workers run while this process computes (a training or inference
    loop), so one core is left to it: loader workers, or decoding the next chunk while one is
    predicted. Otherwise the caller waits for them (a dataset check, a cache fill, prepare).
    The result can be 0 only with `beside_compute` on one core: load in the main process then.
    """
    cores = os.cpu_count() or 1
    return max(0, min(MAX_WORKERS, cores - 1 if beside_compute else cores))
