"""Grad-CAM's targets, and Grad-CAM from a forward pass run elsewhere (`ForwardCapture`), on
randomly initialised three-class networks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.evaluation.gradcam import ForwardCapture, class_score, grad_cam
from pneumo_fastai.model import EnsembleModule, build_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _network(seed: int) -> torch.nn.Module:
    """A random NORMAL / BACTERIA / VIRUS network whose output layer is scaled down, so that no
    class's probability saturates at 0 or 1 (which would make PNEUMONIA's map BACTERIA's)."""
    torch.manual_seed(seed)
    model = build_model(TrainConfig(), n_out=3).eval()
    with torch.no_grad():
        model[1][-1].weight.mul_(0.02)
    return model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _network(0)


def _batch(seed: int, n: int = 2, size: int = 96) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_pneumonia_is_the_merged_logit_whose_softmax_against_normal_is_p_pneumonia():
    logits = torch.tensor([[0.3, 1.2, -0.4], [2.0, -1.0, 0.5]])
    merged = class_score(logits)  # default: every class but the first, as one class
    two = torch.softmax(torch.stack([logits[:, 0], merged], dim=1), dim=1)
    p = torch.softmax(logits, dim=1)
    assert torch.allclose(two[:, 1], p[:, 1:].sum(dim=1))
    assert torch.equal(class_score(logits, (1,)), logits[:, 1])  # one class: its logit
    assert torch.equal(class_score(logits, 2), logits[:, 2])
    assert torch.equal(class_score(logits, torch.tensor([2, 0])), torch.tensor([-0.4, 2.0]))
    # a binary model's PNEUMONIA is its class-1 logit, as before
    assert torch.equal(class_score(logits[:, :2]), logits[:, 1])


def test_gradcam_from_the_prediction_pass_equals_its_own_pass(model):
    xb = _batch(1)
    with ForwardCapture(model) as seen, torch.inference_mode():
        model(xb)
    gray, cam = seen.explain()
    assert cam.shape == gray.shape == (2, 96, 96) and cam.dtype == np.float32
    assert cam == pytest.approx(grad_cam(model, xb), abs=1e-4)
    assert cam == pytest.approx(grad_cam(model, xb, target=(1, 2)), abs=1e-4)
    assert np.abs(cam - grad_cam(model, xb, target=1)).mean() > 0.01  # not BACTERIA alone
    assert seen.explain(target=1)[1] == pytest.approx(grad_cam(model, xb, target=1), abs=1e-4)
    assert gray == pytest.approx(
        (xb[:, 0] * 0.229 + 0.485).clamp(0, 1).numpy(), abs=1e-6
    )  # what the model saw, un-normalised
    assert not model._forward_hooks and not model[0][7]._forward_hooks  # hooks removed


def test_passes_run_by_other_threads_are_not_captured(model):
    mine, theirs = _batch(2, n=1), _batch(3, n=1)
    with ForwardCapture(model) as seen:
        with torch.inference_mode():
            model(mine)
        other = threading.Thread(target=lambda: model(theirs))
        other.start()
        other.join()
    assert seen.explain()[1] == pytest.approx(grad_cam(model, mine), abs=1e-4)


def test_an_ensemble_is_explained_by_the_mean_of_its_members_maps(model):
    ensemble = EnsembleModule([model, _network(1)], [1.0, 1.5])
    xb = _batch(4)
    with ForwardCapture(ensemble) as seen, torch.inference_mode():
        ensemble(xb)
    assert seen.explain()[1] == pytest.approx(grad_cam(ensemble, xb), abs=1e-4)


def test_explaining_before_any_pass_is_an_error(model):
    with ForwardCapture(model) as seen:
        assert not seen.ran
    with pytest.raises(RuntimeError, match="No forward pass"):
        seen.explain()


def test_layer3_maps_have_twice_layer4s_grid_at_the_same_input(model):
    xb = _batch(5, size=64)
    four, three = grad_cam(model, xb), grad_cam(model, xb, layer="layer3")
    assert four.shape == three.shape == (2, 64, 64)

    def cells(cam: np.ndarray) -> int:
        """Distinct values along the centre row of a map sampled at its grid's cell centres."""
        return len({round(float(v), 4) for v in cam[0, 32, 4::8]})

    assert cells(three) > cells(four) and not np.allclose(three, four)
