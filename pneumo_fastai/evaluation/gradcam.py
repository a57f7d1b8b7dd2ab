"""Grad-CAM: where in an X-ray the evidence for a class lies, from layer4's activations.

    from pneumo_fastai.evaluation.gradcam import ForwardCapture, grad_cam
    heat = grad_cam(model, xb)   # (n, H, W) in [0, 1]; warm = evidence for PNEUMONIA

    with ForwardCapture(classifier.exported.learner.model) as seen:
        pred = classifier.predict("scan.dcm")   # the prediction's own (and only) forward pass
    gray, heat = seen.explain()                 # what it saw, and its Grad-CAM of PNEUMONIA

Grad-CAM (Selvaraju et al. 2017) weighs layer4's activations (`model[0][7]`) by the mean gradient
of a score over each channel, keeps the positive part and upsamples it to the input. The score of
one class is its logit. Several classes are explained as one class by the log-sum-exp of their
logits, the logit the merged class has: softmax of (NORMAL's logit, that score) is exactly
(P(NORMAL), P(PNEUMONIA)). So on a NORMAL / BACTERIA / VIRUS model the PNEUMONIA score is
log(exp z_BACTERIA + exp z_VIRUS), whose gradient is the BACTERIA and VIRUS logits' gradients
weighted by each one's share of P(PNEUMONIA); on a NORMAL / PNEUMONIA model it is the PNEUMONIA
logit itself. PNEUMONIA (every class but the first) is what is explained by default.

`layer="layer3"` explains layer3's activations instead: a grid of the input side / 16 (4x4 for
a 64 px model, against layer4's 2x2), finer but from less class-specific features.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.hook import Hooks, hook_output
from PIL import Image
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import BODY_LAYERS, EnsembleModule

LAYER4 = BODY_LAYERS["layer4"]  # the last layer of the ResNet body (`model[0]`)
CamLayer = Literal["layer4", "layer3"]
CAM_LAYERS: dict[str, int] = {name: BODY_LAYERS[name] for name in ("layer4", "layer3")}
CAM_STRIDE: dict[str, int] = {"layer4": 32, "layer3": 16}  # input pixels per grid cell
# A class index for every image, a tuple of classes explained as one, one class per image
# (a tensor), or None for PNEUMONIA (every class but the first).
Target = int | tuple[int, ...] | torch.Tensor | None


def class_score(logits: torch.Tensor, target: Target = None) -> torch.Tensor:
    """The score Grad-CAM explains, per image: a class's logit, or classes' logits' log-sum-exp."""
    if target is None:
        target = tuple(range(1, logits.shape[1]))  # PNEUMONIA: every class but NORMAL
    if isinstance(target, tuple):
        return torch.logsumexp(logits[:, list(target)], dim=1)
    targets = torch.as_tensor(target, device=logits.device).expand(len(logits))
    return logits.gather(1, targets.long()[:, None])[:, 0]


def _rescale(cam: np.ndarray) -> np.ndarray:
    """Each map stretched to [0, 1] (an all-zero map stays zero)."""
    low = cam.min(axis=(1, 2), keepdims=True)
    span = cam.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (cam - low) / np.maximum(span, 1e-12), 0.0).astype(np.float32)


def _cam(acts: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM maps from a layer's activations and the score's gradient, at `size`, in [0, 1]."""
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts.float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
    return _rescale(cam.cpu().numpy())


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """`model` in eval mode (no dropout) inside the block, then back to its former mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def grad_cam(
    model: nn.Module,  # `nn.Sequential(body, head)` or an `EnsembleModule` of them
    xb: torch.Tensor,  # normalised batch, (n, 3, H, W), on the model's device
    layer: CamLayer = "layer4",  # the body layer whose activations are weighed
    target: Target = None,  # what is explained (see `Target`); None: PNEUMONIA
) -> np.ndarray:
    """Grad-CAM heatmaps of `target` for each image: (n, H, W) float32 scaled to [0, 1].

    Runs its own forward and backward pass. For an ensemble, the mean of its members' maps (each
    member explains its own logits).
    """
    if isinstance(model, EnsembleModule):
        maps = [grad_cam(m, xb, layer, target) for m in model.members]
        return _rescale(np.mean(maps, axis=0))
    module = model[0][CAM_LAYERS[layer]]
    with _evaluating(model), hook_output(module, detach=False) as hook, torch.enable_grad():
        x = xb.as_subclass(torch.Tensor).detach().requires_grad_(True)  # a graph even if frozen
        score = class_score(model(x), target)
        # the gradient at the layer only: the parameters' .grad stay untouched
        (grads,) = torch.autograd.grad(score.sum(), hook.stored)
    return _cam(hook.stored.detach(), grads, tuple(xb.shape[-2:]))


def _head_cam(network: nn.Sequential, acts: torch.Tensor, size: tuple[int, int],
              target: Target) -> np.ndarray:  # fmt: skip
    """Grad-CAM of one network from its layer4 activations: only the head is run again."""
    head = network[1]  # layer4 ends the body, so the head alone maps its output to the logits
    with _evaluating(head), torch.enable_grad():
        # a clone is an ordinary tensor even when the pass ran under `torch.inference_mode`
        a = acts.clone().float().requires_grad_(True)
        (grads,) = torch.autograd.grad(class_score(head(a), target).sum(), a)
    return _cam(a.detach(), grads, size)


class ForwardCapture:
    """Keeps what a model's forward pass in this thread saw, to explain it with Grad-CAM after.

    Inside the `with` block, the input batch and each network's layer4 activations of the model's
    passes run by this thread are kept (the last pass's); passes run by other threads, such as a
    server's concurrent requests, are not. `explain` then runs only the head backwards, so a
    prediction and its Grad-CAM share one decoded image and one forward pass.
    """

    def __init__(self, model: nn.Module):  # `nn.Sequential(body, head)` or an `EnsembleModule`
        self.model = model
        self.networks = list(model.members) if isinstance(model, EnsembleModule) else [model]
        self.layers = [network[0][LAYER4] for network in self.networks]
        self.thread = threading.get_ident()
        self.kept: dict[nn.Module, torch.Tensor] = {}
        self.hooks = Hooks([model, *self.layers], self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if threading.get_ident() == self.thread:
            self.kept[module] = inputs[0] if module is self.model else output

    def __enter__(self) -> ForwardCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.remove()

    @property
    def ran(self) -> bool:
        """Whether a forward pass of the model ran in this thread inside the block."""
        return self.model in self.kept

    def explain(self, target: Target = None) -> tuple[np.ndarray, np.ndarray]:
        """The last pass's input as gray (n, H, W) in [0, 1] and its Grad-CAM of `target`."""
        if not self.ran:
            raise RuntimeError("No forward pass of the model ran inside ForwardCapture.")
        xb = self.kept[self.model]
        size = tuple(xb.shape[-2:])
        maps = [
            _head_cam(network, self.kept[layer], size, target)
            for network, layer in zip(self.networks, self.layers, strict=True)
        ]
        cam = maps[0] if len(maps) == 1 else _rescale(np.mean(maps, axis=0))
        return unnormalize_gray(xb), cam


def unnormalize_gray(xb: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: (n, H, W) gray images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=xb.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=xb.device)[None, :, None, None]
    return (xb.as_subclass(torch.Tensor) * std + mean).clamp(0, 1)[:, 0].float().cpu().numpy()


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> Image.Image:
    """An RGB picture of a gray image in [0, 1] with its heatmap in [0, 1] (jet) on top."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam)[..., :3]
    mixed = (1 - alpha) * np.repeat(gray[..., None], 3, axis=2) + alpha * heat
    return Image.fromarray((np.clip(mixed, 0, 1) * 255).astype(np.uint8))
