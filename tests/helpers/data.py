"""Images and datasets the tests write in temp folders, and the real X-rays in ../shared/data."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chest_xray"


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40), mode: str = "L") -> Path:
    """A small random grayscale image with some structure (saved in `path`'s format)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1]).reshape(size[1], size[0])
    arr = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").convert(mode).save(path)
    return path


def make_dataset(root: Path, n_normal: int = 12, n_pneumonia: int = 24, val: bool = False) -> Path:
    """Kaggle layout with Kermany-style names: 2 images per patient, PNEUMONIA twice as common."""
    for i in range(n_normal):
        write_image(root / "train" / "NORMAL" / f"IM-{i // 2:04d}-{i % 2 + 1:04d}.jpeg", seed=i)
    for i in range(n_pneumonia):
        kind = "bacteria" if i % 3 else "virus"
        name = f"person{i // 2}_{kind}_{i % 2 + 1}.jpeg"
        write_image(root / "train" / "PNEUMONIA" / name, seed=1000 + i)
    if val:
        write_image(root / "val" / "NORMAL" / "NORMAL2-IM-9001-0001.jpeg", seed=5000)
        write_image(root / "val" / "PNEUMONIA" / "person900_virus_1.jpeg", seed=5001)
    return root


def require_shared_data() -> Path:
    """The real images folder, or skip the test with the reason."""
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(f"real chest X-rays not found at {SHARED_DATA}")
    return SHARED_DATA


def copy_real(root: Path, counts: dict[str, int]) -> Path:
    """The first `counts[cls]` real X-rays of each class copied into `root`/train/cls."""
    shared = require_shared_data()
    for cls, n in counts.items():
        dest = root / "train" / cls
        dest.mkdir(parents=True)
        for src in sorted((shared / "train" / cls).iterdir())[:n]:
            shutil.copy(src, dest / src.name)
    return root


# ---- the evaluation dataset: train and test splits, and bad files in test/ ------------------

TEST_PATIENTS = 4  # per class in test/, two images each
BAD_FILES = {  # corrupt or foreign files put in the test folder, with how their reason starts
    "NORMAL/IM-9001-0001.jpeg": "empty",
    "PNEUMONIA/person9002_bacteria_1.jpeg": "image file is truncated",
    "PNEUMONIA/notes.txt": "not a",
}


def _patch_xray(path: Path, cls: str, seed: int) -> None:
    """A noisy non-square gray image; PNEUMONIA ones carry a bright patch."""
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 110, (90, 76)).astype(np.uint8)
    if cls == "PNEUMONIA":
        top, left = rng.randint(0, 40), rng.randint(0, 30)
        pixels[top : top + 45, left : left + 40] += 120
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path, quality=90)


def make_split(folder: Path, patients: int, first_id: int) -> None:
    """`patients` patients per class with two images each, named like the Kermany files."""
    for k in range(patients):
        pid = first_id + k
        for j in (1, 2):
            _patch_xray(folder / "NORMAL" / f"IM-{pid:04d}-{j:04d}.jpeg", "NORMAL", 2 * pid + j)
            name = f"person{pid}_bacteria_{j}.jpeg"
            _patch_xray(folder / "PNEUMONIA" / name, "PNEUMONIA", 7919 * pid + j)


def add_bad_files(folder: Path) -> None:
    """An empty JPEG, a truncated JPEG and a text file in the class folders."""
    (folder / "NORMAL" / "IM-9001-0001.jpeg").write_bytes(b"")
    good = next((folder / "PNEUMONIA").glob("*.jpeg")).read_bytes()
    (folder / "PNEUMONIA" / "person9002_bacteria_1.jpeg").write_bytes(good[: len(good) // 2])
    (folder / "PNEUMONIA" / "notes.txt").write_text("not an image")


def make_evaluation_dataset(root: Path) -> Path:
    """24 training images (6 patients a class) and a test split of `TEST_PATIENTS` patients a
    class plus the `BAD_FILES`."""
    make_split(root / "train", patients=6, first_id=100)
    make_split(root / "test", patients=TEST_PATIENTS, first_id=500)
    add_bad_files(root / "test")
    return root


def good_test_files(data: Path) -> list[Path]:
    """The readable images of the evaluation dataset's test split, sorted."""
    test = data / "test"
    bad = {test / name for name in BAD_FILES}
    return sorted(p for p in test.rglob("*") if p.is_file() and p not in bad)


# ---- files of every kind the loaders read ---------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG that declares `width` x `height` but holds almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gradient_xray(seed: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A random float image in 0..1 with a vertical gradient (rows, cols)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0.1, 0.9, size[1])[:, None] * np.ones(size[0])
    return np.clip(base + rng.normal(0, 0.15, base.shape), 0, 1)


def write_xray_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    """An uncompressed single-frame 16-bit DICOM file written with pydicom."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.PhotometricInterpretation = "DX", photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def every_kind(folder: Path) -> list[Path]:
    """One file per input kind `load_xray` reads, all in `folder`: JPEG, 8- and 16-bit gray,
    RGB, RGBA and palette PNG, 16-bit TIFF, a MONOCHROME1 DICOM and a DICOM named by its UID."""
    folder.mkdir(parents=True, exist_ok=True)
    g = gradient_xray(7)
    gray8 = Image.fromarray((g * 255).astype(np.uint8))
    rgb = Image.merge("RGB", [gray8] * 3)
    rgba = rgb.copy()
    rgba.putalpha(200)
    files = {
        "jpeg.jpeg": gray8,
        "gray8.png": gray8,
        "gray16.png": Image.fromarray((g * 65535).astype(np.uint16)),
        "rgb.png": rgb,
        "rgba.png": rgba,
        "palette.png": rgb.convert("P"),
        "gray16.tif": Image.fromarray((g * 4095).astype(np.uint16)),
    }
    paths = []
    for name, img in files.items():
        img.save(folder / name)
        paths.append(folder / name)
    paths.append(write_xray_dicom(folder / "mono1.dcm", g * 4095, "MONOCHROME1"))
    paths.append(write_xray_dicom(folder / "1.2.840.10008.99", g * 4095))  # named by its UID
    return paths
