from pathlib import Path

import pytest

from pneumo_fastai.config import TrainConfig


def test_defaults_match_the_reference_setup():
    c = TrainConfig()
    assert (c.seed, c.valid_pct, c.size, c.bs, c.epochs, c.patience) == (42, 0.3, 224, 32, 50, 12)
    assert (c.dropout_in, c.dropout_hidden, c.hidden) == (0.5, 0.25, 256)
    assert c.split == "patient" and c.balanced and c.label_smoothing > 0


@pytest.mark.parametrize(
    "bad", [{"valid_pct": 0.0}, {"valid_pct": 1.0}, {"split": "random"}, {"size": 8}, {"bs": 0},
            {"label_smoothing": 1.0}, {"target_sensitivity": 0.0}],
)  # fmt: skip
def test_invalid_values_are_refused(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_round_trips_through_a_json_ready_dict():
    c = TrainConfig(data=Path("/d"), weights=Path("/w.pth"), epochs=3, split="image")
    d = c.to_dict()
    assert d["data"] == "/d" and d["weights"] == "/w.pth"
    assert TrainConfig.from_dict({**d, "unknown_future_key": 1}) == c


def test_is_frozen_and_replace_validates():
    c = TrainConfig()
    with pytest.raises(AttributeError):
        c.epochs = 3  # type: ignore[misc]
    assert c.replace(epochs=3).epochs == 3
    with pytest.raises(ValueError):
        c.replace(valid_pct=2.0)


def test_package_exports_the_scripting_api():
    import pneumo_fastai

    assert callable(pneumo_fastai.train) and callable(pneumo_fastai.load_model)
    assert pneumo_fastai.TrainConfig is TrainConfig
