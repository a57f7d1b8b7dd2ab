"""In-memory cache of decoded, prepared X-rays, filled once before training.

Decoding and resizing a full-size X-ray costs far more than the augmentation that follows, and
one epoch reads every image again. When the squashed `size` x `size` uint8 images fit in a small
share of RAM (5,216 images at 224 px: 262 MB), they are decoded once, in parallel, and every
epoch reads them from memory. Loader workers forked afterwards share the cache copy-on-write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..fileio import worker_count
from ..progress import track
from .images import load_xray
from .preprocess import Preprocessing

RAM_SHARE = 0.1  # the cache may take at most this share of physical memory


def cache_bytes(n_images: int, size: int) -> int:
    """Memory the cache needs for `n_images` grayscale images of `size` x `size`."""
    return n_images * size * size


def physical_memory() -> int:
    """Total physical memory in bytes (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def should_cache(requested: bool | None, n_images: int, size: int) -> bool:
    """`requested` when set; otherwise cache when it fits in `RAM_SHARE` of physical memory."""
    if requested is not None:
        return requested
    return cache_bytes(n_images, size) <= RAM_SHARE * physical_memory()


def decode_prepared(path: Path, prep: Preprocessing) -> Image.Image:
    """One X-ray decoded (JPEG draft where possible) and prepared: `prep.size` square, mode L."""
    return prep(load_xray(path, draft=prep.size))


def fill_cache(
    files: Sequence[Path],
    prep: Preprocessing,  # what the model sees: crop, squash, equalise
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Image.Image]:
    """Decode and prepare every file once, in threads (PIL releases the GIL while decoding)."""
    threads = threads or max(1, worker_count(beside_compute=False))
    with ThreadPoolExecutor(threads) as pool:
        images = pool.map(lambda f: decode_prepared(f, prep), files)
        shown = track(images, len(files), "Caching decoded images in RAM", enabled=progress)
        return {str(f): img for f, img in zip(files, shown, strict=True)}
