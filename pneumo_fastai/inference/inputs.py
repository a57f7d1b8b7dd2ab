"""What to predict: files, folders and globs expanded; items decoded in chunks, in threads.

    files = expand_inputs(["scan.dcm", "scans/", "more/*.png"])
    for chunk in decode_chunks(files, size=224, n=64):  # [(item, image or error text), ...]
        ...

Decoding uses the one readability rule (`check_image`), so a file that cannot be read gets the
same reason here as in training, `data check` and evaluation. Nothing here imports torch.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.formats import PREDICT_SUFFIXES
from ..data.images import check_image, is_dicom, to_gray8
from ..errors import DataError
from ..fileio import worker_count

Item = Path | str | Image.Image  # what can be predicted: a file path or an in-memory image
_GLOB_CHARS = frozenset("*?[")


def read_item(item: Item, size: int) -> Image.Image | str:
    """`item` as an 8-bit gray image of about `size` px (see `load_xray`), or why it cannot be."""
    try:
        if isinstance(item, Image.Image):
            return to_gray8(item, size)
        check = check_image(item, decode=True, draft=size)
        return check.image if check.image is not None else check.reason or "unreadable"
    except Exception as e:  # one odd file must not end a run over thousands
        return f"unexpected {type(e).__name__} while reading the image: {e}"


def decode_chunks(items: Iterable[Item], size: int, n: int) -> Iterator[list[tuple[Item, Any]]]:
    """(item, image or error) in chunks of `n`; the next chunk decodes while one is predicted."""
    pending: list[tuple[Item, Future]] = []
    with ThreadPoolExecutor(max(1, worker_count(beside_compute=True))) as pool:
        for item in items:
            pending.append((item, pool.submit(read_item, item, size)))
            if len(pending) == 2 * n:
                yield [(x, f.result()) for x, f in pending[:n]]
                pending = pending[n:]
        while pending:
            yield [(x, f.result()) for x, f in pending[:n]]
            pending = pending[n:]


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, with a PREDICT_SUFFIXES suffix or DICOM content."""
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not _hidden(p, folder)
        and (p.suffix.lower() in PREDICT_SUFFIXES or is_dicom(p))
    ]


def expand_inputs(inputs: Iterable[Path | str]) -> list[Path]:
    """Files to predict from files, folders (recursive) and glob patterns; in order, no repeats.

    A file named explicitly or matched by a glob is kept whatever its suffix (as a shell would
    pass it); folders contribute only images (see `find_images`). `**` matches nested folders.
    """
    found: list[Path] = []
    missing: list[str] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.exists():
            hits = [path]
        elif _GLOB_CHARS & set(str(raw)):
            hits = [Path(h) for h in sorted(glob.glob(str(path), recursive=True))]
        else:
            hits = []
        if not hits:
            missing.append(str(raw))
        for hit in hits:
            found += find_images(hit) if hit.is_dir() else [hit]
    if missing:
        raise DataError(
            f"No such file or folder, and no file matches: {', '.join(missing)}. Check the paths "
            "(quote glob patterns such as 'scans/*.dcm' if the shell mangles them)."
        )
    if not found:
        raise DataError(
            "No images found in the given folders. Images need one of the suffixes "
            f"{', '.join(sorted(PREDICT_SUFFIXES))} or DICOM content."
        )
    return list(dict.fromkeys(found))
