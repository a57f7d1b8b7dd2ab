"""Extract a zip safely: `data download`'s release archive and `serve`'s batch uploads.

    from pneumo_fastai.zipfiles import UPLOAD, extract_zip
    files = extract_zip(Path("scans.zip"), Path(tmp) / "scans", UPLOAD)

Refused, with a `DataError` that names the archive and what to do: entries that point outside
the target folder (zip slip); more entries or more uncompressed bytes than the caller's
`ZipLimits`, checked on the archive's directory before anything is written (`zipfile` stops each
entry at its declared size and fails its CRC check if it holds more); encrypted entries; and
names that clash (a file and a folder, or the same file twice). On a refusal nothing extracted
is left in a target folder this call created. macOS and Windows clutter (`__MACOSX/`,
`.DS_Store`, `._*`) is skipped. Nothing here imports torch.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataError

CHUNK = 1 << 20  # bytes copied at a time
_JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class ZipLimits:
    """What one archive may hold once extracted."""

    max_bytes: int  # uncompressed bytes of all entries together
    max_entries: int  # files and folders


DATASET = ZipLimits(max_bytes=16 << 30, max_entries=100_000)  # the release: 1.2 GB, ~5,900 files
UPLOAD = ZipLimits(max_bytes=1 << 30, max_entries=5_000)  # `serve`'s batch tab


def is_junk(parts: tuple[str, ...]) -> bool:
    """Whether an archive path is macOS/Windows clutter (`__MACOSX/`, `.DS_Store`, `._*`)."""
    return any(p in _JUNK_NAMES or p.startswith("._") for p in parts)


def _entry_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The entry's path inside the target folder; refuses one that would leave it."""
    rel = PurePosixPath(info.filename.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or ":" in (rel.parts or ("",))[0]:
        raise DataError(
            f"{archive}: entry {info.filename!r} points outside the extraction folder; the "
            "archive is corrupt or malicious. Delete it and download (or zip) it again."
        )
    return rel


def _check_entries(archive: Path, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Refuse an archive whose directory alone shows it is too big or unreadable."""
    if len(infos) > limits.max_entries:
        raise DataError(
            f"{archive} holds {len(infos):,} entries, more than the {limits.max_entries:,} "
            "allowed. Split it into smaller archives."
        )
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_bytes:
        raise DataError(
            f"{archive} would extract to {declared:,} bytes, more than the "
            f"{limits.max_bytes:,} allowed. Split it into smaller archives."
        )
    encrypted = [info.filename for info in infos if info.flag_bits & 0x1]
    if encrypted:
        raise DataError(
            f"{archive} is encrypted ({encrypted[0]!r}); zip the images again without a password."
        )


def extract_zip(
    archive: Path,
    out: Path,
    limits: ZipLimits,  # DATASET or UPLOAD
    progress: Callable[[int, int], None] | None = None,  # called with (bytes written, total)
    name: str | None = None,  # how messages name the archive (default: its path)
) -> list[Path]:
    """Extract `archive` into `out` within `limits`; the files written, in archive order."""
    out = Path(out)
    try:
        return _extract(Path(archive), out, limits, progress)
    except DataError as e:
        raise DataError(str(e).replace(str(archive), name or str(archive))) from None


def _extract(
    archive: Path, out: Path, limits: ZipLimits, progress: Callable[[int, int], None] | None
) -> list[Path]:
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    base = out.resolve()
    files: list[Path] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_entries(archive, infos, limits)
            total = sum(info.file_size for info in infos)
            for info in infos:
                rel = _entry_path(archive, info)
                if is_junk(rel.parts) or not rel.parts:
                    continue
                target = base.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    raise FileExistsError(0, "exists", str(target))
                files.append(target)
                with zf.open(info) as src, open(target, "xb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                if progress is not None:
                    progress(info.file_size, total)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        _discard(out, created, files)
        raise DataError(
            f"{archive} has entries whose names clash ({Path(e.filename or '').name!r} is both "
            "a file and a folder, or listed twice). Zip the images again."
        ) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, EOFError) as e:
        _discard(out, created, files)
        raise DataError(f"{archive} is not a readable zip ({e}). Zip or download it again.") from e
    except DataError:
        _discard(out, created, files)
        raise
    return files


def _discard(out: Path, created: bool, files: list[Path]) -> None:
    """Remove what a refused extraction wrote: the whole folder if this call made it."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for f in files:
        f.unlink(missing_ok=True)
