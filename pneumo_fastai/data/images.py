"""Open any chest X-ray file as an 8-bit grayscale PIL image.

    from pneumo_fastai.data.images import load_xray
    img = load_xray("scan.dcm", draft=448)  # mode "L"; short side >= 448 px if it was larger

Hospitals send JPEG, PNG and TIFF (8- or 16-bit; gray, RGB, RGBA, LA or palette) and DICOM.
Everything downstream (training, evaluation, prediction) sees the same thing: a mode "L" uint8
image, upright as the EXIF orientation says. Decisions:

- 8-bit data is kept as is. 16-bit, 32-bit and float data is windowed to 8 bit by percentiles:
  the 0.5 % .. 99.5 % range of the pixel values is stretched to 0..255 and the rest clipped, so a
  few hot or dead detector pixels do not squash the whole image into a handful of grey levels (as
  a min-max stretch would). Nearly constant images fall back to min-max.
- Transparent pixels (RGBA, LA, palette with transparency) are composited onto black, the colour of
  air on a radiograph, and counted (`ImageCheck.translucent`): a semi-transparent X-ray turns
  darker, so prediction flags it (`inference/inputs.py`). Colour becomes gray by ITU-R 601 luma,
  as PIL's "L" conversion does.
- PIL opens files only through `open_image`: JPEG, PNG and TIFF, never a DICOM (whose 128-byte
  preamble may hold another format's header, such as EPS, which would run Ghostscript).
- DICOM: Modality LUT (rescale slope/intercept or LUT), then the file's VOI: its VOI LUT if it has
  one, else its first window centre/width, mapped from the VOI's output range to 0..255; without
  a VOI, 8-bit data is kept and deeper data gets the percentile window above. MONOCHROME1 is
  inverted afterwards so that bone is bright as in MONOCHROME2. Multi-frame files: only the first
  frame is decoded and used. Compressed transfer syntaxes decode when pydicom has a plugin for
  them installed; otherwise the error names the packages that would add one.
- An image whose header declares more than `max_pixels` pixels (default PIL's
  `Image.MAX_IMAGE_PIXELS`, about 89 Mpx; the lower of the two applies) is refused before its pixels
  are decoded. A truncated file is refused whatever PIL's `ImageFile.LOAD_TRUNCATED_IMAGES` says.
- `check_image` is the one readability rule: training and `data check` read headers (quick) or
  decode, evaluation and prediction decode; all of them get the same kinds and reasons.
- `draft` bounds memory and time for big images: JPEG decodes at a reduced DCT scale (1/2, 1/4,
  1/8), then any format is box-averaged by the largest power of two that keeps the short side
  >= `draft`. Powers of two, as JPEG's scaling, so that a JPEG, a PNG or an in-memory copy of
  the same X-ray reach the model through the same reduction (a 224 px image for a 64 px model:
  112 px from each, not 112 from the JPEG and 74 from the rest).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile
from PIL.PngImagePlugin import PngImageFile
from PIL.TiffImagePlugin import TiffImageFile
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
    pixel_array,
)

from ..errors import DataError
from ..fileio import worker_count
from ..progress import track
from .formats import DICOM_SUFFIXES

_PIL_FORMATS = ("JPEG", "PNG", "TIFF")  # PIL opens nothing else (no EPS, no exotic plugins)
_COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr")
PREVIEW_PX = 128  # side of the colour preview kept for the input checks (`ImageCheck.preview`)
# What pydicom raises on a damaged file (its values are parsed lazily, so also while decoding)
_DICOM_HEADER_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    NotImplementedError,
    struct.error,
    EOFError,
    ValueError,
    TypeError,
)
CHUNK_BYTES = 1 << 20  # read at a time when a file's end is checked
STRIP_PIXELS = 1 << 22  # pixels of an image with alpha flattened at a time
T = TypeVar("T")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, the weights of PIL's RGB -> "L"


def is_dicom(path: Path | str) -> bool:
    """Whether `path` is a DICOM Part 10 file ("DICM" at byte 128), whatever its name."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def open_image(
    source: Path | str | io.BytesIO,
    formats: Sequence[str] = _PIL_FORMATS,  # PIL plugins allowed to read it (a subset)
) -> Image.Image:
    """The one way the package opens a raster with PIL: allow-listed formats, never a DICOM."""
    if not set(formats) <= set(_PIL_FORMATS):
        raise ValueError(f"formats must be among {_PIL_FORMATS}, got {formats}")
    if not isinstance(source, io.BytesIO) and is_dicom(source):
        raise DataError(f"{source}: a DICOM file; read it with `load_xray`, not as a raster.")
    return Image.open(source, formats=list(formats))


def window_to_uint8(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Stretch the `low`..`high` percentile range of `values` to 0..255, clipping the rest."""
    lo, hi = np.percentile(values, (low, high))
    if hi <= lo:  # nearly constant: a percentile window would be empty
        lo, hi = values.min(), values.max()
    return _scale_to_uint8(values, float(lo), float(hi))


def _scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map `lo`..`hi` linearly onto 0..255 (clipped; `hi` < `lo` inverts); a constant gives 0."""
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _rgb_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Luma of an RGB(A) array; 8-bit stays 8-bit, deeper data is percentile-windowed."""
    luma = rgb[..., :3] @ _LUMA
    return np.rint(luma).astype(np.uint8) if rgb.dtype == np.uint8 else window_to_uint8(luma)


def _dicom_gray_to_uint8(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT, then the dataset's VOI (or a percentile window), then MONOCHROME1 inversion."""
    values = apply_modality_lut(stored, ds)
    if ds.get("VOILUTSequence"):
        entries, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
        lut = apply_voi(np.arange(first, first + (entries or 2**16)), ds)
        shown = apply_voi(np.rint(values).astype(np.int64), ds)
        gray = _scale_to_uint8(shown, float(lut.min()), float(lut.max()))
    elif None not in (ds.get("WindowCenter"), ds.get("WindowWidth")):  # empty values: no window
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)  # the window's output range
        gray = _scale_to_uint8(apply_windowing(values, ds), float(lo), float(hi))
    else:
        gray = values if values.dtype == np.uint8 else window_to_uint8(values)
    return 255 - gray if ds.PhotometricInterpretation == "MONOCHROME1" else gray


def _dicom_to_uint8(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """One decoded DICOM frame (gray, RGB or palette) as display-ready uint8 gray pixels."""
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        return _rgb_to_uint8(apply_color_lut(frame, ds))
    if frame.ndim == 3:  # RGB; pydicom has already converted YBR to RGB
        return _rgb_to_uint8(frame)
    return _dicom_gray_to_uint8(frame, ds)


def _check_pixels(path: Path, width: int, height: int, cap: int | None) -> None:
    """Refuse an image whose declared size exceeds `cap` pixels, before anything is decoded."""
    if cap is not None and width * height > cap:
        raise DataError(
            f"{path}: image is too large to open safely ({width}x{height} pixels, limit {cap}). "
            "Downsample it first, or raise max_pixels if you trust the file."
        )


def _read_dicom(path: Path, cap: int | None) -> np.ndarray:
    """Decode the first frame of a DICOM file into uint8 gray pixels."""
    if not is_dicom(path):
        raise DataError(
            f"{path}: not a DICOM file (no 'DICM' marker at byte 128). "
            "Re-export it as a DICOM Part 10 file, or remove it."
        )
    try:
        ds = pydicom.dcmread(path, defer_size=1024)  # large values (pixel data) stay on disk
        width, height = int(ds.get("Columns", 0)), int(ds.get("Rows", 0))
    except _DICOM_HEADER_ERRORS as e:
        raise DataError(
            f"{path}: DICOM header cannot be parsed ({e}). Replace or remove the file."
        ) from e
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(
            f"{path}: DICOM file has no pixel data (truncated, or a report rather than an "
            "image?). Use the image series, or re-export the file."
        )
    _check_pixels(path, width, height, cap)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise DataError(f"{path}: DICOM file meta names no transfer syntax. Re-export the file.")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise DataError(
            f"{path}: DICOM transfer syntax {syntax.name} ({syntax}) is not supported by pydicom. "
            "Convert the file to uncompressed DICOM (e.g. `gdcmconv --raw`)."
        ) from e
    if not decoder.is_available:
        raise DataError(
            f"{path}: pixel data is compressed as {syntax.name} ({syntax}) and no decoder for it "
            f"is installed. Install one of: {'; '.join(decoder.missing_dependencies)}."
        )
    try:
        return _dicom_to_uint8(pixel_array(path, index=0), ds)
    except (*_DICOM_HEADER_ERRORS, AttributeError, KeyError, RuntimeError) as e:
        raise DataError(
            f"{path}: DICOM pixel data cannot be decoded ({e}). Replace or remove the file."
        ) from e


def _jpeg_complete(path: Path) -> bool:
    """Whether an end-of-image marker follows the JPEG's last scan.

    Read backwards a chunk at a time (memory stays at one chunk, whatever the file's length):
    0xFFD9 cannot occur inside entropy-coded data, so the file is complete when the last EOI
    comes after the last start-of-scan.
    """
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        eoi = None
        tail = b""
        while end > 0:
            start = max(0, end - CHUNK_BYTES)
            f.seek(start)
            data = f.read(end - start) + tail[:1]  # one byte of overlap: a marker across chunks
            if eoi is None and (i := data.rfind(b"\xff\xd9")) != -1:
                eoi = start + i
            if (j := data.rfind(b"\xff\xda")) != -1:
                return eoi is not None and eoi > start + j
            tail, end = data, start
    return False


def _png_complete(path: Path) -> bool:
    """Whether walking the PNG's chunks reaches IEND."""
    with path.open("rb") as f:
        f.seek(8)
        while len(header := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                return True
            f.seek(length + 4, os.SEEK_CUR)  # chunk data and CRC
    return False


def _tiff_complete(path: Path, img: TiffImageFile) -> bool:
    """Whether every strip or tile of the TIFF's first page lies inside the file."""
    tags = img.tag_v2
    offsets = tags.get(273) or tags.get(324) or ()  # StripOffsets or TileOffsets
    counts = tags.get(279) or tags.get(325) or ()  # StripByteCounts or TileByteCounts
    end = max((o + c for o, c in zip(offsets, counts, strict=True)), default=0)
    return end <= path.stat().st_size


def _complete(path: Path, img: Image.Image) -> bool:
    """Whether the file holds all the data its header promises (PIL's check can be switched off)."""
    if isinstance(img, JpegImageFile):
        return _jpeg_complete(path)
    if isinstance(img, PngImageFile):
        return _png_complete(path)
    return _tiff_complete(path, img)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _alpha_strips(img: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    """(top row, strip) of an image with alpha, a few megapixels at a time, palette expanded."""
    rows = max(1, STRIP_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        strip = img.crop((0, top, img.width, min(img.height, top + rows)))
        yield top, strip.convert("RGBA") if strip.mode.startswith("P") else strip


def translucent_share(img: Image.Image) -> float:
    """Share of an image's pixels that are not fully opaque (0 for a mode without alpha)."""
    if not _has_alpha(img):
        return 0.0
    opaque = sum(strip.getchannel("A").histogram()[255] for _, strip in _alpha_strips(img))
    return 1.0 - opaque / (img.width * img.height)


def _flatten(img: Image.Image) -> Image.Image:
    """Reduce any PIL mode to "L" (8-bit data) or "I"/"F" (deeper data, windowed later).

    Alpha composites onto black: the luma times alpha / 255, a strip at a time, so that a
    9400 px RGBA PNG costs its decoded pixels and one gray copy, not three RGBA copies.
    """
    if img.mode.startswith("I;16"):
        return img.convert("I")
    if img.mode in ("L", "I", "F"):
        return img
    if _has_alpha(img):
        gray = Image.new("L", img.size)
        for top, strip in _alpha_strips(img):
            gray.paste(ImageChops.multiply(strip.convert("L"), strip.getchannel("A")), (0, top))
        return gray
    return img.convert("L")


def _preview(img: Image.Image) -> Image.Image | None:
    """A small RGB copy of a colour image, for the input checks (None for gray images)."""
    if img.mode not in _COLOUR_MODES:
        return None
    factor = max(1, max(img.size) // PREVIEW_PX)
    size = (max(1, img.width // factor), max(1, img.height // factor))
    # nearest: no full-size premultiplied copy, as PIL's reduce and box resize make of RGBA
    return img.resize(size, Image.Resampling.NEAREST).convert("RGB")


def _read_raster(path: Path, cap: int | None, draft: int | None) -> Image.Image:
    """Decode a JPEG, PNG or TIFF (JPEG at a reduced scale for `draft`), upright."""
    with open_image(path) as img:
        _check_pixels(path, *img.size, cap)
        if not _complete(path, img):
            raise DataError(f"{path}: image file is truncated. Re-export or remove it.")
        if draft is not None and isinstance(img, JpegImageFile):
            img.draft("L", (draft, draft))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return img


def _reduce(img: Image.Image, draft: int | None) -> Image.Image:
    """Box-average by the largest power of two that keeps the short side >= `draft`."""
    factor = min(img.size) // draft if draft else 1
    factor = 1 << (factor.bit_length() - 1) if factor >= 2 else 1
    return img.reduce(factor) if factor >= 2 else img


def to_gray8(img: Image.Image, draft: int | None = None) -> Image.Image:
    """An in-memory image as `load_xray` makes a file: mode "L" uint8, reduced for `draft`."""
    img = _reduce(_flatten(img), draft)
    return img if img.mode == "L" else Image.fromarray(window_to_uint8(np.asarray(img)))


@dataclass(frozen=True)
class Decoding:
    """A file decoded: the gray image, and what flattening it to gray loses."""

    image: Image.Image  # mode "L", as `load_xray` gives it
    preview: Image.Image | None = None  # colour images: an RGB copy of at most PREVIEW_PX a side
    translucent: float = 0.0  # share of pixels that were not fully opaque


def load_xray(
    path: Path | str,
    draft: int | None = None,  # target short side: decode/reduce big images to no less than this
    max_pixels: int | None = None,  # refuse larger images; None: PIL's Image.MAX_IMAGE_PIXELS
) -> Image.Image:
    """Read a JPEG, PNG, TIFF or DICOM file as an upright mode "L" uint8 image."""
    return decode_xray(path, draft, max_pixels).image


def decode_xray(
    path: Path | str,
    draft: int | None = None,  # see `load_xray`
    max_pixels: int | None = None,  # see `load_xray`
) -> Decoding:
    """`load_xray`, with the colour preview and the translucent share of the stored pixels."""
    path = Path(path)
    caps = [c for c in (max_pixels, Image.MAX_IMAGE_PIXELS) if c is not None]
    cap = min(caps) if caps else None
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes). Re-export or remove it.")
        if path.suffix.lower() in DICOM_SUFFIXES or is_dicom(path):
            return Decoding(to_gray8(Image.fromarray(_read_dicom(path, cap)), draft))
        img = _read_raster(path, cap, draft)
        preview, translucent = _preview(img), translucent_share(img)
        return Decoding(to_gray8(img, draft), preview, translucent)
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file. Check the path.") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"{path}: image is too large to open safely ({e}). Downsample it first."
        ) from e
    except UnidentifiedImageError as e:
        raise DataError(
            f"{path}: not a JPEG, PNG, TIFF or DICOM image. Replace or remove the file."
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{path}: cannot be read as an image ({e}). Replace or remove the file."
        ) from e


def load_xray_bytes(
    data: bytes,  # the bytes of an encoded JPEG, PNG, TIFF or DICOM file (an upload, say)
    draft: int | None = None,
    max_pixels: int | None = None,
    name: str = "image bytes",  # how messages name it
) -> Image.Image:
    """`load_xray` for a file held in memory (it goes through a private temporary file)."""
    with tempfile.TemporaryDirectory(prefix="pneumo-image-") as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(data)
        try:
            return load_xray(path, draft, max_pixels)
        except DataError as e:
            raise DataError(str(e).replace(str(path), name)) from e


@dataclass(frozen=True)
class ImageCheck:
    """Whether one file is a usable image, what its header says, and (decoded) its pixels."""

    path: Path
    bytes: int  # file size
    format: str | None = None  # PIL format (JPEG, PNG, TIFF) or DICOM
    mode: str | None = None  # PIL mode of the stored pixels (L, RGB, I;16, ...)
    dims: tuple[int, int] | None = None  # stored width, height
    image: Image.Image | None = None  # mode "L", as `load_xray` gives it (only when decoded)
    preview: Image.Image | None = None  # decoded colour images: a small RGB copy (`Decoding`)
    translucent: float = 0.0  # decoded: share of pixels that were not fully opaque
    kind: str | None = None  # None: usable; else empty, unreadable (no header) or corrupt
    reason: str | None = None  # why it is not usable, without the path

    @property
    def ok(self) -> bool:
        """Whether the file is usable."""
        return self.kind is None


def _header(path: Path) -> tuple[str | None, str | None, tuple[int, int] | None, str | None]:
    """(format, mode, dims, problem) from the file's header alone."""
    if is_dicom(path):
        return "DICOM", None, None, None
    try:
        with open_image(path) as img:
            return img.format, img.mode, img.size, None
    except Exception as e:  # PIL raises many types for a broken header
        return None, None, None, f"{type(e).__name__}: {e}".replace(f" {str(path)!r}", "")


def check_image(
    path: Path | str,
    decode: bool,  # False: size and header only (cheap); True: decode the pixels as well
    draft: int | None = None,  # decode at about this size (see `load_xray`)
) -> ImageCheck:
    """Check one file: not empty, a header that parses, and (with `decode`) pixels that decode.

    Kinds: `empty` (0 bytes), `unreadable` (missing, or no JPEG/PNG/TIFF/DICOM header), `corrupt`
    (the header parses but the pixels do not decode, e.g. a truncated file). Reasons never name
    the file: callers do.
    """
    path = Path(path)
    size = path.stat().st_size if path.is_file() else None
    if size == 0:
        return ImageCheck(path, 0, kind="empty", reason="empty file")
    fmt, mode, dims, problem = _header(path) if size else (None, None, None, "no such file")
    if not decode:
        kind = None if problem is None else "unreadable"
        return ImageCheck(path, size or 0, fmt, mode, dims, kind=kind, reason=problem)
    try:
        got = decode_xray(path, draft=draft)
    except DataError as e:
        kind = "corrupt" if problem is None else "unreadable"
        reason = str(e).removeprefix(f"{path}: ")
        return ImageCheck(path, size or 0, fmt, mode, dims, kind=kind, reason=reason)
    return ImageCheck(path, size or 0, fmt, mode, dims, got.image, got.preview, got.translucent)


def check_images(
    paths: Sequence[Path],
    decode: bool,  # see `check_image`
    draft: int | None = None,
    progress: bool = False,  # a progress bar while checking
    what: str | None = None,  # the bar's label
    keep: Callable[[ImageCheck], T] = lambda check: check,  # what to keep of each, in the thread
) -> list[T]:
    """`keep(check_image(p))` for every path, in order, in threads (decoding releases the GIL).

    `keep` runs in the worker thread, so that a caller who only needs a digest or a flag of each
    decoded image does not hold every image in memory at once.
    """
    label = what or ("Decoding" if decode else "Reading headers")
    with ThreadPoolExecutor(max(1, worker_count(beside_compute=False))) as pool:
        values = pool.map(lambda p: keep(check_image(p, decode, draft)), paths)
        return list(track(values, len(paths), label, enabled=progress))


def find_unreadable(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Files that are empty or whose header cannot be parsed, with the reason (cheap scan)."""
    return [(c.path, c.reason or "") for c in check_images(paths, decode=False) if not c.ok]
