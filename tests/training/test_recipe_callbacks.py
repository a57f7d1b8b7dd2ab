"""`recipe_callbacks`: each recipe option adds its callback only when set, with the set value."""

import pytest
from fastai.callback.mixup import CutMix, MixUp

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.training.callbacks import ProgressiveResize
from pneumo_fastai.training.mixstyle import MixStyle
from pneumo_fastai.training.train import recipe_callbacks
from pneumo_fastai.training.weight_average import WeightAverage

CASES = [  # option, value, callback, the callback's attribute holding the value
    ("mixup", 0.4, MixUp, "distrib"),
    ("cutmix", 1.0, CutMix, "distrib"),
    ("mixstyle", 0.5, MixStyle, "p"),
    ("progressive", 0.25, ProgressiveResize, "fraction"),
    ("ema", 0.998, WeightAverage, "decay"),
]


@pytest.mark.parametrize(("option", "value", "kind", "attribute"), CASES)
def test_an_option_adds_its_callback_only_when_set(option, value, kind, attribute):
    assert not any(isinstance(cb, kind) for cb in recipe_callbacks(TrainConfig()))
    (cb,) = [c for c in recipe_callbacks(TrainConfig(**{option: value})) if isinstance(c, kind)]
    got = getattr(cb, attribute)
    assert got == value or getattr(got, "concentration1", None) == value  # MixUp's Beta


@pytest.mark.parametrize(("option", "value"), [("ema", 1.0), ("ema", -0.1), ("mixstyle", 1.5)])
def test_an_option_out_of_range_is_refused(option, value):
    with pytest.raises(ValueError, match=option):
        TrainConfig(**{option: value})
