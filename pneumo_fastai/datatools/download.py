"""Fetch the Kermany et al. chest X-ray release and install it in the Kaggle layout.

    pneumo-fastai data download --dest data/
    from pneumo_fastai.datatools.download import download_dataset
    result = download_dataset("data")  # -> data/chest_xray/{train,test}/{NORMAL,PNEUMONIA}

The archive is streamed into `ChestXRay2017.zip.part` (resumed with an HTTP Range request after
an interruption), checked against its known size and sha256, extracted into a temporary folder,
and renamed into place; the marker file `.download-complete.json` is written last, so a folder
without it was never finished.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..config import CLASSES, URL_ENV
from ..data.layout import KAGGLE_FOLDER, SPLITS, list_split, present_splits
from ..errors import DataError
from ..fileio import sha256_file, write_text_atomic
from ..zipfiles import DATASET, extract_zip, is_junk

Source = Literal["mendeley", "kaggle"]

# ChestXRay2017.zip of Mendeley Data doi:10.17632/rscbjbr9sj.2 (file id f12eaf6d-...). The link is
# the one the dataset page serves and public download scripts use (e.g. GitHub
# Gregz9/CNN_vs_Weak, downloadData.sh); it redirects to the file's storage host. Size and sha256
# were not published by Mendeley itself: they are the figures that several independent public
# project files (download scripts and data READMEs found with a code search) state for this
# archive and agree on. A mismatch is refused, never "fixed" by accepting the new file.
MENDELEY_URL = (
    "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
    "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded"
)
MENDELEY_SIZE = 1_235_512_464
MENDELEY_SHA256 = "13efc055629733dbab07877f8b3c9f81097840dbcdaa326a8542322c2281ce36"
ARCHIVE_NAME = "ChestXRay2017.zip"
KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
FOLDER = KAGGLE_FOLDER  # installed folder under --dest, the name Kaggle's zip uses
MARKER = ".download-complete.json"
LICENSE_FILE = "LICENSE-DATA.txt"
CITATION_FILE = "CITATION.txt"

LICENSE_TEXT = """\
Chest X-ray images of Kermany, Zhang and Goldbaum (2018), "Labeled Optical Coherence Tomography
(OCT) and Chest X-Ray Images for Classification", Mendeley Data, V2, doi:10.17632/rscbjbr9sj.2.

Licence: Creative Commons Attribution 4.0 International (CC BY 4.0),
https://creativecommons.org/licenses/by/4.0/
You may share and adapt the images for any purpose, provided that you credit the authors (see
CITATION.txt), link to the licence, and say whether you changed the images.
"""

CITATION_TEXT = """\
Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images
for Classification. Mendeley Data, V2, 2018. doi:10.17632/rscbjbr9sj.2

Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by
Image-Based Deep Learning. Cell. 2018;172(5):1122-1131.e9. doi:10.1016/j.cell.2018.02.010
"""

CHUNK = 1 << 20
USER_AGENT = "pneumo-fastai data download"  # some hosts refuse urllib's default agent
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DownloadResult:
    """Where the dataset now is and how it got there."""

    root: Path  # dest/chest_xray: pass it as --data
    source: Source  # mendeley or kaggle
    origin: str  # URL or Kaggle handle it came from
    sha256: str | None  # of the downloaded archive (None for Kaggle)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    already_present: bool = False  # True when an earlier run had finished; nothing was fetched
    resumed_from: int = 0  # bytes already in the .part file when this run started


class _Interrupted(Exception):
    """The connection ended before the whole body arrived."""


def download_dataset(
    dest: Path | str = "data",  # folder that receives chest_xray/ (created if needed)
    source: Source = "mendeley",  # mendeley: public archive, no account; kaggle: via kagglehub
    url: str | None = None,  # archive URL; default: $PNEUMO_DATA_URL, else the Mendeley link
    sha256: str | None = None,  # expected archive sha256; default: the Mendeley release's
    retries: int = 3,  # resume this often in one run after a cut connection that made progress
    progress: bool = True,  # show progress bars
) -> DownloadResult:
    """Download, verify and install the chest X-ray release into `dest/chest_xray`."""
    dest = Path(dest).expanduser()
    final = dest / FOLDER
    done = _read_marker(final)
    if done is not None:
        return done
    if final.exists():
        raise DataError(
            f"{final} exists but was not completed by `pneumo-fastai data download` (no {MARKER}). "
            f"Point training at it with --data {final} if it is a good copy, or delete it and run "
            "the download again."
        )
    if source not in ("mendeley", "kaggle"):
        raise DataError(f"Unknown --source {source!r}: use mendeley or kaggle.")
    if source == "kaggle" and (url or sha256):
        raise DataError("--url and --sha256 apply to --source mendeley only; drop them.")
    dest.mkdir(parents=True, exist_ok=True)
    if source == "kaggle":
        return _install_from_kaggle(dest, progress)
    url = url or os.environ.get(URL_ENV) or MENDELEY_URL
    expected_sha = (sha256 or MENDELEY_SHA256).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected_sha):
        raise DataError(f"--sha256 {sha256!r} is not a sha256: give its 64 hex digits.")
    expected_size = MENDELEY_SIZE if expected_sha == MENDELEY_SHA256 else None
    archive = dest / ARCHIVE_NAME
    part = dest / (ARCHIVE_NAME + ".part")
    resumed_from = part.stat().st_size if part.exists() else 0
    if not (archive.exists() and _sha256(archive, progress) == expected_sha):
        archive.unlink(missing_ok=True)  # a wrong archive must not keep the finished name
        fetch(url, part, expected_size, retries, progress)
        _verify(part, url, expected_size, expected_sha, progress)
        os.replace(part, archive)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".extract-") as tmp:
        tree = Path(tmp) / "tree"
        with _bar(progress) as bar:
            task = bar.add_task("Extracting", total=None)
            extract_zip(
                archive, tree, DATASET,
                progress=lambda n, total: bar.update(task, advance=n, total=total),
            )  # fmt: skip
        result = _install(tree, final, "mendeley", url, expected_sha, move=True)
    archive.unlink()
    return dataclasses.replace(result, resumed_from=resumed_from)


def fetch(
    url: str,
    part: Path,  # bytes are appended here; an existing file is resumed with a Range request
    expected_size: int | None,  # refuse a server that offers another size; None: trust it
    retries: int = 3,  # extra attempts after a cut connection, as long as each one made progress
    progress: bool = True,
) -> None:
    """Stream `url` into `part`, resuming what is there; raise `DataError` when it cannot."""
    with _bar(progress) as bar:
        task = bar.add_task(f"Downloading {ARCHIVE_NAME}", total=expected_size)
        attempt = 0
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                _fetch_once(url, part, expected_size, bar, task)
                return
            except _Interrupted as e:
                now = part.stat().st_size if part.exists() else 0
                if attempt >= retries or now <= before:
                    raise DataError(
                        f"The download from {url} was interrupted at {now:,} bytes ({e}). Run "
                        f"the same command again to resume from {part}, or point training at an "
                        "existing copy of the dataset with --data PATH."
                    ) from e
                attempt += 1


def _fetch_once(
    url: str, part: Path, expected_size: int | None, bar: Progress, task: TaskID
) -> None:
    """One HTTP request: resume from the size of `part` when the server honours Range."""
    start = part.stat().st_size if part.exists() else 0
    if expected_size is not None and start > expected_size:
        part.unlink()
        start = 0
    request = Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urlopen(request, timeout=TIMEOUT_S)
    except HTTPError as e:
        if e.code == 416 and start and start == expected_size:
            return  # the .part already holds the whole file
        if e.code == 416:  # the server will not resume this file: start it again
            part.unlink()
            return _fetch_once(url, part, expected_size, bar, task)
        raise DataError(
            f"{url} answered HTTP {e.code} ({e.reason}). The link may have moved: pass --url "
            f"(or set {URL_ENV}) to a working copy of {ARCHIVE_NAME}, try --source kaggle, or "
            "point training at an existing copy with --data PATH."
        ) from e
    except (URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"Cannot reach {url} ({reason}). Check the network connection (or --url / "
            f"{URL_ENV}), or point training at an existing copy of the dataset with --data PATH."
        ) from e
    with response:
        if response.status == 206 and _range_start(response) != start:
            response.close()
            part.unlink()
            return _fetch_once(url, part, expected_size, bar, task)
        if response.status != 206:
            start = 0  # the server ignored the Range header: start the file again
        total = _response_total(response)
        if expected_size is not None and total is not None and total != expected_size:
            raise DataError(
                f"{url} offers {total:,} bytes but {ARCHIVE_NAME} is {expected_size:,} bytes: it "
                "is not the expected release. Pass --url to the right file, or --sha256 to accept "
                "a different archive on purpose."
            )
        bar.update(task, total=total, completed=start)
        with open(part, "ab" if start else "wb") as f:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(task, advance=len(chunk))
            except (http.client.HTTPException, OSError) as e:
                raise _Interrupted(f"{type(e).__name__}: {e}") from e
    if total is not None and part.stat().st_size < total:
        raise _Interrupted("connection closed early")


_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


def _range_start(response) -> int | None:
    """First byte offset of a 206 answer, from its Content-Range header."""
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _response_total(response) -> int | None:
    """Full size of the remote file from Content-Range (206) or Content-Length (200)."""
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        return int(match.group(2)) if match and match.group(2) != "*" else None
    length = response.headers.get("Content-Length")
    return int(length) if length else None


def _verify(
    part: Path, url: str, expected_size: int | None, expected_sha: str, progress: bool
) -> None:
    """Refuse (and delete) a download whose size or sha256 is not the expected one."""
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DataError(
            f"The file from {url} has {size:,} bytes, expected {expected_size:,}. It was deleted; "
            "run the download again."
        )
    digest = _sha256(part, progress)
    if digest != expected_sha:
        part.unlink()
        raise DataError(
            f"The file from {url} has sha256 {digest}, expected {expected_sha}. It was deleted. "
            "Run the download again; if this repeats, the file on the server changed: use --source "
            "kaggle, or point training at an existing copy with --data PATH."
        )


def _sha256(path: Path, progress: bool) -> str:
    """Hex sha256 of a file, with a progress bar."""
    with _bar(progress) as bar:
        task = bar.add_task(f"Verifying {path.name}", total=path.stat().st_size)
        return sha256_file(path, progress=lambda n: bar.update(task, advance=n))


def find_layout_root(tree: Path) -> Path:
    """The shallowest folder under `tree` whose `train/` holds one folder per class."""
    candidates = [tree, *(p for p in tree.rglob("*") if p.is_dir())]
    candidates.sort(key=lambda p: (len(p.parts), p.as_posix()))
    for folder in candidates:
        if is_junk(folder.relative_to(tree).parts):
            continue
        if all((folder / "train" / cls).is_dir() for cls in CLASSES):
            return folder
    raise DataError(
        f"The downloaded data has no train/{{{','.join(CLASSES)}}} folders, so it is not the chest "
        "X-ray release. Check --url, or point training at an existing copy with --data PATH."
    )


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """Images per split and class in an installed Kaggle-layout folder."""
    return {split: list_split(root / split).counts() for split in present_splits(root)}


def _install(
    tree: Path, final: Path, source: Source, origin: str, sha256: str | None, move: bool
) -> DownloadResult:
    """Stage the splits of `tree` beside `final`, rename the stage into place, then mark it done."""
    layout = find_layout_root(tree)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{FOLDER}-stage-"))
    try:
        for split in SPLITS:
            if (layout / split).is_dir():
                if move:
                    shutil.move(layout / split, stage / split)
                else:
                    shutil.copytree(layout / split, stage / split, ignore=_ignore_junk)
        (stage / LICENSE_FILE).write_text(LICENSE_TEXT)
        (stage / CITATION_FILE).write_text(CITATION_TEXT)
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    result = DownloadResult(
        root=final, source=source, origin=origin, sha256=sha256, counts=count_images(final)
    )
    record = {
        "source": source,
        "origin": origin,
        "sha256": sha256,
        "counts": result.counts,
        "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(final / MARKER, json.dumps(record, indent=2) + "\n")
    return result


def _ignore_junk(folder: str, names: list[str]) -> set[str]:
    """`shutil.copytree` filter that leaves macOS/Windows clutter behind."""
    return {n for n in names if is_junk((n,))}


def _read_marker(final: Path) -> DownloadResult | None:
    """The result recorded by a finished earlier run, or None."""
    marker = final / MARKER
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    return DownloadResult(
        root=final,
        source=record.get("source", "mendeley"),
        origin=record.get("origin", ""),
        sha256=record.get("sha256"),
        counts=record.get("counts", {}),
        already_present=True,
    )


def _install_from_kaggle(dest: Path, progress: bool) -> DownloadResult:
    """Fetch Kaggle's copy through `kagglehub` (optional) and install it like the Mendeley zip."""
    try:
        import kagglehub  # optional: only this source needs it
    except ImportError as e:
        raise DataError(
            "--source kaggle needs the kagglehub package: `pip install kagglehub`, then put your "
            "API token in ~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and KAGGLE_KEY). Or use "
            "the default --source mendeley, which needs no account."
        ) from e
    if not _kaggle_credentials():
        raise DataError(
            "--source kaggle needs Kaggle API credentials: create a token at "
            "https://www.kaggle.com/settings and save it as ~/.kaggle/kaggle.json (or set "
            "KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_CONFIG_DIR). Or use --source mendeley."
        )
    try:
        cached = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as e:  # kagglehub raises its own and requests' types
        raise DataError(
            f"kagglehub could not fetch {KAGGLE_DATASET} ({type(e).__name__}: {e}). Check the "
            "network and your credentials, or point training at an existing copy with --data PATH."
        ) from e
    return _install(cached, dest / FOLDER, "kaggle", KAGGLE_DATASET, None, move=False)


def _kaggle_credentials() -> bool:
    """Whether kagglehub will find an API token (environment or kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")).expanduser()
    return (config_dir / "kaggle.json").is_file()


def _bar(enabled: bool) -> Progress:
    """A rich byte-count progress bar (hidden when `enabled` is False)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
