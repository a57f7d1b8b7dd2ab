"""What to predict: files, folders and globs expanded; items decoded in chunks, in threads.

    files = expand_inputs(["scan.dcm", "scans/", "more/*.png"])
    for chunk in decode_chunks(files, size=224, n=64):  # [(item, Decoded or error text), ...]
        ...

Decoding uses the one readability rule (`check_image`), so a file that cannot be read gets the
same reason here as in training, `data check` and evaluation. Nothing here imports torch.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.formats import PREDICT_SUFFIXES
from ..data.images import check_image, is_dicom, to_gray8, translucent_share
from ..errors import DataError
from ..fileio import worker_count
from .ood_scores import input_problem

Item = Path | str | Image.Image  # what can be predicted: a file path or an in-memory image
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Decoded:
    """An item decoded for the model, and what the cheap input checks found."""

    image: Image.Image  # mode "L", about `size` px (see `load_xray`)
    problem: str | None = None  # why it is unlike a chest radiograph (`ood_scores.input_problem`)


def translucency_problem(share: float) -> str | None:
    """Why an image with transparent pixels is not read as it looks, or None (fully opaque)."""
    if share <= 0:
        return None
    return (
        f"{share:.0%} of its pixels are transparent (alpha < 255), composited onto black: the "
        "model sees a darker image than its colours show; save it without transparency"
    )


def read_item(item: Item, size: int) -> Decoded | str:
    """`item` decoded for a model of input `size` and checked (`Decoded.problem`), or why it
    cannot be read.

    Every file is decoded once: the checks use the decode's own colour preview, stored size
    and transparency, not a second read of the file.
    """
    try:
        if isinstance(item, Image.Image):
            gray = to_gray8(item, size)
            alpha = translucency_problem(translucent_share(item))
            return Decoded(gray, alpha or input_problem(gray, item))
        check = check_image(item, decode=True, draft=size)
        if check.image is None:
            return check.reason or "unreadable"
        problem = translucency_problem(check.translucent) or input_problem(
            check.image, check.preview, check.dims
        )
        return Decoded(check.image, problem)
    except Exception as e:  # one odd file must not end a run over thousands
        return f"unexpected {type(e).__name__} while reading the image: {e}"


def decode_chunks(
    items: Iterable[Item], size: int, n: int
) -> Iterator[list[tuple[Item, Decoded | str]]]:
    """(item, `read_item` result) in chunks of `n`; the next chunk decodes while one is used."""
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
