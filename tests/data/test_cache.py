import pickle

import torch

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.block import LoadXray, build_dataloaders, uses_cache
from pneumo_fastai.data.cache import decode_prepared, fill_cache, should_cache
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.preprocess import Preprocessing

from ..helpers.data import write_image


def test_fill_cache_decodes_every_file_to_the_training_size(dataset):
    files = list(discover(dataset).files)
    cache = fill_cache(files, Preprocessing(32), progress=False)
    assert set(cache) == {str(f) for f in files}
    assert {img.size for img in cache.values()} == {(32, 32)}
    assert {img.mode for img in cache.values()} == {"L"}


def test_decode_prepared_squashes_non_square_images(tmp_path):
    path = write_image(tmp_path / "wide.png", seed=0, size=(300, 100))
    assert decode_prepared(path, Preprocessing(64)).size == (64, 64)


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
    loader = LoadXray(32, fill_cache(files, Preprocessing(32), progress=False))
    clone = pickle.loads(pickle.dumps(loader))
    assert clone.cache is None and clone.draft == 32
    assert len(pickle.dumps(loader)) < 2000
