"""`recipe_callbacks`: each recipe option adds its callback only when set, with the set value."""

import pytest
from fastai.callback.mixup import CutMix, MixUp

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.training.callbacks import ProgressiveResize
from pneumo_fastai.training.mixstyle import MixStyle
from pneumo_fastai.training.train import recipe_callbacks
from pneumo_fastai.training.weight_average import WeightAverage

CASES = [  # option, value, callback, how to read the value back from the callback
    ("mixup", 0.4, MixUp, lambda cb: float(cb.distrib.concentration1)),  # Beta(alpha, alpha)
    ("cutmix", 1.0, CutMix, lambda cb: float(cb.distrib.concentration1)),
    ("mixstyle", 0.5, MixStyle, lambda cb: cb.p),
    ("progressive", 0.25, ProgressiveResize, lambda cb: cb.fraction),
    ("ema", 0.998, WeightAverage, lambda cb: cb.decay),
]


@pytest.mark.parametrize(("option", "value", "kind", "read"), CASES)
def test_an_option_adds_its_callback_only_when_set(option, value, kind, read):
    assert not any(isinstance(cb, kind) for cb in recipe_callbacks(TrainConfig()))
    (cb,) = [c for c in recipe_callbacks(TrainConfig(**{option: value})) if isinstance(c, kind)]
    assert read(cb) == pytest.approx(value)


@pytest.mark.parametrize(("option", "value"), [("ema", 1.0), ("ema", -0.1), ("mixstyle", 1.5)])
def test_an_option_out_of_range_is_refused(option, value):
    with pytest.raises(ValueError, match=option):
        TrainConfig(**{option: value})
