"""The pooled-feature capture: what it keeps, in which form, and that it leaves no hook behind."""

import pytest
import torch

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.inference.features import capture, pooled_layers
from pneumo_fastai.model import EnsembleModule, build_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ensemble() -> EnsembleModule:
    torch.manual_seed(0)
    return EnsembleModule([build_model(TrainConfig()) for _ in range(2)], [1.0, 2.0]).eval()


def _pooled(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 512-d average of layer4: the body, then the head's pooling and flatten."""
    return network[1][:2](network[0](x))


def test_capture_keeps_every_pass_of_each_member_in_order(ensemble):
    layers = pooled_layers(ensemble)
    kept: list[list[torch.Tensor]] = [[] for _ in layers]
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    with capture(layers, kept):
        for x in batches:
            ensemble(x)
    assert [[t.shape for t in k] for k in kept] == [[(3, 512), (2, 512)]] * 2
    with torch.no_grad():
        for member, k in zip(ensemble.members, kept, strict=True):
            for x, t in zip(batches, k, strict=True):
                torch.testing.assert_close(t, _pooled(member, x))
    assert not any(t.requires_grad for k in kept for t in k), "detached"
    assert all(not layer._forward_hooks for layer in layers), "hooks removed on exit"


def test_capture_gives_fp32_under_autocast_and_unhooks_after_an_error(ensemble):
    layers = pooled_layers(ensemble)[:1]
    kept: list[list[torch.Tensor]] = [[]]
    with (
        pytest.raises(RuntimeError, match="stop"),
        capture(layers, kept),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        ensemble.members[0](torch.randn(2, 3, 32, 32))
        raise RuntimeError("stop")
    assert kept[0][0].dtype == torch.float32 and kept[0][0].device.type == "cpu"
    assert not layers[0]._forward_hooks
