"""Each recipe option changes what the model receives (seeded batches), and is recorded."""

from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.torch_core import set_seed

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.augment import RandomIntensity
from pneumo_fastai.data.block import build_dataloaders
from pneumo_fastai.data.layout import discover
from pneumo_fastai.model import build_learner
from pneumo_fastai.training.train import recipe_callbacks

from ..helpers.data import make_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return discover(make_dataset(tmp_path_factory.mktemp("aug") / "d", 24, 24)).files


# Every augmentation and preprocessing step off, so that each test turns on only its own.
PLAIN = dict(
    max_rotate=0.0, min_zoom=1.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0, gamma=0.0,
    blur=0.0, noise=0.0, crop_margin=0.0,
)  # fmt: skip


def _config(**kw) -> TrainConfig:
    options = {**PLAIN, **kw}
    return TrainConfig(size=32, bs=8, num_workers=0, cache=False, pretrained=False, **options)


def train_batch(files, config: TrainConfig) -> torch.Tensor:
    """The first augmented training batch, seeded (the loaders draw their own seeds when made)."""
    set_seed(0)
    dls = build_dataloaders(files, config, device="cpu", progress=False)
    return dls.train.one_batch()[0].as_subclass(torch.Tensor)


def valid_batch(files, config: TrainConfig) -> torch.Tensor:
    dls = build_dataloaders(files, config, device="cpu", progress=False)
    return next(iter(dls.valid))[0].as_subclass(torch.Tensor)


class _Capture(Callback):
    """Keeps the first batch the model would receive, then ends fit."""

    order = 99

    def before_batch(self) -> None:
        if self.training:
            self.xb = self.learn.xb[0].as_subclass(torch.Tensor).clone()
            self.yb = self.learn.yb[0]
            raise CancelFitException()


def model_batch(files, config: TrainConfig) -> torch.Tensor:
    """The first training batch as the network receives it (after the recipe's callbacks)."""
    set_seed(0)
    dls = build_dataloaders(files, config, device="cpu", progress=False)
    learn = build_learner(dls, config)
    learn.remove_cbs(learn.cbs[2:])  # no progress bar
    capture = _Capture()
    learn.fit(config.epochs, cbs=[*recipe_callbacks(config), capture])
    return capture.xb


def test_the_same_seed_gives_the_same_batch(files):
    assert torch.equal(train_batch(files, _config()), train_batch(files, _config()))
    assert torch.equal(model_batch(files, _config()), model_batch(files, _config()))


@pytest.mark.parametrize(
    "option",
    [
        {"gamma": 0.4},
        {"blur": 1.0},
        {"noise": 0.05},
        {"min_zoom": 0.8},
        {"max_warp": 0.2},
        {"max_rotate": 25.0},
        {"max_zoom": 1.4},
    ],
)
def test_each_augmentation_changes_the_training_batch(files, option):
    plain, changed = train_batch(files, _config()), train_batch(files, _config(**option))
    assert plain.shape == changed.shape and not torch.allclose(plain, changed)


@pytest.mark.parametrize("option", [{"crop_margin": 0.1}, {"equalize": "hist"}])
def test_each_preprocessing_step_changes_what_validation_sees(files, option):
    plain, changed = valid_batch(files, _config()), valid_batch(files, _config(**option))
    assert plain.shape == changed.shape and not torch.allclose(plain, changed)


def test_mixup_and_cutmix_change_the_batch_the_model_receives(files):
    plain = model_batch(files, _config())
    for option in ({"mixup": 0.4}, {"cutmix": 1.0}):
        mixed = model_batch(files, _config(**option))
        assert mixed.shape == plain.shape and not torch.allclose(mixed, plain), option


def test_progressive_resizing_halves_the_first_epochs_batches(files):
    plain = model_batch(files, _config(epochs=4))
    small = model_batch(files, _config(epochs=4, progressive=0.5))
    assert plain.shape[-2:] == (32, 32) and small.shape[-2:] == (16, 16)


def test_intensity_changes_are_training_only_and_stay_in_range():
    x = torch.rand(16, 1, 20, 20).expand(-1, 3, -1, -1).clone()  # gray, in 3 channels
    aug = RandomIntensity(gamma=0.5, blur=1.0, noise=0.1)
    from fastai.torch_core import TensorImage

    out = aug(TensorImage(x), split_idx=0).as_subclass(torch.Tensor)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    assert torch.equal(aug(TensorImage(x), split_idx=1).as_subclass(torch.Tensor), x)
    assert torch.allclose(out[:, 0], out[:, 1]), "gray stays gray"


def test_recipe_options_are_validated():
    with pytest.raises(ValueError, match="alternatives"):
        _config(mixup=0.4, cutmix=1.0)
    with pytest.raises(ValueError, match="crop_margin"):
        _config(crop_margin=0.6)
    with pytest.raises(ValueError, match="min_zoom"):
        _config(min_zoom=1.2, max_zoom=1.1)


def test_options_are_recorded_in_the_card_and_preprocessing_applied_at_inference(
    trained, tiny_config
):
    import numpy as np

    from pneumo_fastai.config import IMAGENET_MEAN, IMAGENET_STD
    from pneumo_fastai.data.images import load_xray
    from pneumo_fastai.data.preprocess import Preprocessing
    from pneumo_fastai.inference.loading import load_export

    options = dict(crop_margin=0.1, equalize="hist", gamma=0.3, mixup=0.2, progressive=0.5)
    run = trained(tiny_config.replace(**{**PLAIN, **options}, size=32, cache=False, epochs=2))
    card = run.result.card
    assert card.input.preprocessing == {"size": 32, "crop_margin": 0.1, "equalize": "hist"}
    assert all(card.config[k] == v for k, v in options.items())
    assert card.calibration is not None and card.calibration.temperature > 0
    exported = load_export(run.card, device="cpu")
    f = discover(run.config.data).files[0]
    xb = exported.dataloader([f], num_workers=0).one_batch()[0].as_subclass(torch.Tensor)
    prepared = Preprocessing(32, 0.1, "hist")(load_xray(f, draft=32))
    expected = np.asarray(prepared, np.float32) / 255 - np.array(IMAGENET_MEAN)[:, None, None]
    expected = expected / np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(xb[0].numpy(), expected, atol=1e-5)
