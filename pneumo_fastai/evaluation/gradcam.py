"""Grad-CAM: where in an X-ray the evidence for a class lies, from layer4's activations.

    from pneumo_fastai.evaluation.gradcam import grad_cam
    heat = grad_cam(model, xb)   # (n, H, W) in [0, 1]; warm = evidence for PNEUMONIA

Grad-CAM (Selvaraju et al. 2017) weighs layer4's activations (`model[0][7]`) by the mean gradient
of the class logit over each channel, keeps the positive part and upsamples it to the input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..model import STEM_TO_LAYER3

LAYER4 = STEM_TO_LAYER3  # index of layer4 in the ResNet body (`model[0]`)


def grad_cam(
    model: nn.Module,  # `nn.Sequential(body, head)` as built by `model.build_model`
    xb: torch.Tensor,  # normalised batch, (n, 3, H, W), on the model's device
    layer: nn.Module | None = None,  # defaults to layer4, `model[0][7]`
    target: int = 1,  # class whose logit is explained (1: PNEUMONIA)
) -> np.ndarray:
    """Grad-CAM heatmaps of `target` for each image: (n, H, W) float32 scaled to [0, 1]."""
    layer = model[0][LAYER4] if layer is None else layer
    stored: dict[str, torch.Tensor] = {}

    def keep_activations(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        stored["activations"] = output.detach()

    def keep_gradients(module: nn.Module, grad_in: tuple, grad_out: tuple) -> None:
        stored["gradients"] = grad_out[0].detach()

    hooks = [
        layer.register_forward_hook(keep_activations),
        layer.register_full_backward_hook(keep_gradients),
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = xb.as_subclass(torch.Tensor).detach().requires_grad_(True)
            logits = model(x)
            # grad w.r.t. the input only: the hooks see layer4's gradient, parameters keep theirs
            torch.autograd.grad(logits[:, target].sum(), x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    weights = stored["gradients"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * stored["activations"]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(xb.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    cam = torch.where(span > 0, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.float().cpu().numpy()


def unnormalize_gray(xb: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: (n, H, W) gray images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=xb.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=xb.device)[None, :, None, None]
    return (xb.as_subclass(torch.Tensor) * std + mean).clamp(0, 1)[:, 0].float().cpu().numpy()
