import pickle

import pytest
import torch

from pneumo_fastai.cache import decode_resized, fill_cache, should_cache
from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data import LoadXray, build_dataloaders, discover, uses_cache
from pneumo_fastai.errors import PneumoError
from pneumo_fastai.train import resolve_precision, speed_callbacks

from .conftest import write_image


def test_fill_cache_decodes_every_file_to_the_training_size(dataset):
    files = list(discover(dataset).files)
    cache = fill_cache(files, 32, progress=False)
    assert set(cache) == {str(f) for f in files}
    assert {img.size for img in cache.values()} == {(32, 32)}
    assert {img.mode for img in cache.values()} == {"L"}


def test_decode_resized_squashes_non_square_images(tmp_path):
    path = write_image(tmp_path / "wide.png", seed=0, size=(300, 100))
    assert decode_resized(path, 64).size == (64, 64)


def test_should_cache_follows_the_request_or_the_memory_budget():
    assert should_cache(True, 10**9, 4096) and not should_cache(False, 1, 32)
    assert should_cache(None, 1000, 224)
    assert not should_cache(None, 10**9, 4096)


def test_cached_and_uncached_loaders_give_identical_validation_batches(dataset):
    files = discover(dataset).files
    base = TrainConfig(data=dataset, size=32, bs=4, num_workers=0)
    cached = build_dataloaders(files, base.replace(cache=True), device="cpu", progress=False)
    plain = build_dataloaders(files, base.replace(cache=False), device="cpu", progress=False)
    assert uses_cache(cached) and not uses_cache(plain)
    a = torch.cat([x for x, _ in cached.valid])
    b = torch.cat([x for x, _ in plain.valid])
    assert torch.allclose(a, b, atol=1e-6)


def test_the_cache_is_never_pickled(dataset):
    files = list(discover(dataset).files)
    loader = LoadXray(32, fill_cache(files, 32, progress=False))
    clone = pickle.loads(pickle.dumps(loader))
    assert clone.cache is None and clone.draft == 32
    assert len(pickle.dumps(loader)) < 2000


def test_precision_auto_is_fp32_on_cpu_and_mixed_precision_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert speed_callbacks(TrainConfig(), cpu) == []
    with pytest.raises(PneumoError, match="needs a CUDA GPU"):
        resolve_precision("bf16", cpu)
    assert [type(c).__name__ for c in speed_callbacks(TrainConfig(channels_last=True), cpu)] == [
        "ChannelsLast"
    ]
