"""Shared fixtures: tiny datasets built in temp folders, and the real images in ../shared/data."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_xray"


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


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A synthetic dataset of 36 images (12 NORMAL, 24 PNEUMONIA) in a temp folder."""
    return make_dataset(tmp_path / "chest_xray")


def require_shared_data() -> Path:
    """The real images folder, or skip the test with the reason."""
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(f"real chest X-rays not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real NORMAL and 40 real PNEUMONIA X-rays copied into a temp dataset folder."""
    shared = require_shared_data()
    root = tmp_path_factory.mktemp("real") / "chest_xray"
    for cls, n in (("NORMAL", 20), ("PNEUMONIA", 40)):
        dest = root / "train" / cls
        dest.mkdir(parents=True)
        for src in sorted((shared / "train" / cls).iterdir())[:n]:
            shutil.copy(src, dest / src.name)
    return root


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread: fastest for tiny CPU batches, and more threads spin on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """`one_torch_thread` for a whole test module (`pytest.mark.usefixtures`)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def real_export(real_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Card of a 1-epoch, 64 px export from scratch on the 60 real X-rays (trained once)."""
    from pneumo_fastai.config import TrainConfig
    from pneumo_fastai.training.train import train

    exports = tmp_path_factory.mktemp("real_export")
    config = TrainConfig(
        data=real_subset, pretrained=False, epochs=1, size=64, bs=8, num_workers=0, seed=1,
        exports=exports, name="real64",
    )  # fmt: skip
    with one_torch_thread():
        return train(config, progress=False, log=lambda _: None).paths.card


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
