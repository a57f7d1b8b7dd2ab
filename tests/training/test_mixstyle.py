"""MixStyle: blended channel statistics in training, the plain network everywhere else."""

import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.torch_core import set_seed
from torch import nn

from pneumo_fastai.training.mixstyle import LAYERS, MixStyle, mix_styles


def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)


def normalised(x: torch.Tensor) -> torch.Tensor:
    mu, sigma = stats(x)
    return (x - mu[..., None, None]) / sigma[..., None, None]


def test_each_image_takes_the_blend_of_its_own_and_its_partners_statistics():
    x = torch.randn(4, 3, 8, 8) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None, None] + 5
    lam = torch.tensor([1.0, 0.0, 0.25, 0.5])[:, None, None, None]
    perm = torch.tensor([1, 2, 3, 0])
    out = mix_styles(x, lam, perm)
    mu, sigma = stats(x)
    out_mu, out_sigma = stats(out)
    flat = lam[:, :, 0, 0]
    torch.testing.assert_close(out_mu, flat * mu + (1 - flat) * mu[perm])
    torch.testing.assert_close(
        out_sigma, flat * sigma + (1 - flat) * sigma[perm], rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(out[0], x[0])  # lam 1: the image's own style
    # the content, normalised per image and channel, is the image's own
    torch.testing.assert_close(normalised(out), normalised(x), rtol=1e-3, atol=1e-3)


class LayerInputs(Callback):
    """What reaches the layer after layer2, in training and in validation, with the batch."""

    def __init__(self, model: nn.Sequential):
        self.model, self.seen = model, []

    def before_fit(self) -> None:
        self.hook = self.model[0][LAYERS[1] + 1].register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple) -> None:
        self.seen.append((module.training, self.learn.xb[0].clone(), inputs[0].detach().clone()))

    def after_fit(self) -> None:
        self.hook.remove()


def tiny_resnet_like() -> nn.Sequential:
    """A body with the fastai ResNet body's eight children, layer1 and layer2 convolutions."""
    body = nn.Sequential(*[nn.Identity() for _ in range(8)])
    body[LAYERS[0]] = nn.Conv2d(1, 4, 3, padding=1)
    body[LAYERS[1]] = nn.Conv2d(4, 4, 3, padding=1)
    return nn.Sequential(
        body, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    )


@pytest.mark.slow
def test_training_batches_are_mixed_and_validation_and_the_export_are_not(tmp_path):
    set_seed(0)
    x = torch.randn(48, 1, 8, 8) * torch.rand(48, 1, 1, 1) * 3
    items = list(zip(x, (x.mean(dim=(1, 2, 3)) > 0).long(), strict=True))
    dls = DataLoaders.from_dsets(items[:32], items[32:], bs=8, device="cpu")
    model = tiny_resnet_like()
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), path=tmp_path)
    seen = LayerInputs(model)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 0.0, cbs=[MixStyle(p=1.0), seen])  # lr 0: the same weights throughout
    body = model[0].eval()
    trained = [(xb, got) for training, xb, got in seen.seen if training]
    validated = [(xb, got) for training, xb, got in seen.seen if not training]
    assert len(trained) == 4 and len(validated) == 2
    with torch.no_grad():
        for xb, got in validated:  # validation sees the plain layers
            torch.testing.assert_close(got, body[: LAYERS[1] + 1](xb))
        for xb, got in trained:  # training: the statistics are another image's blend
            plain = body[: LAYERS[1] + 1](xb)
            assert not torch.allclose(stats(got)[0], stats(plain)[0], atol=1e-3)
    assert all(not body[i]._forward_hooks for i in LAYERS), "the hooks live only during fit"
