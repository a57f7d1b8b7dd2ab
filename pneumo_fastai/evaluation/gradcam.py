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
from PIL import Image
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..inference.loading import ExportedModel
from ..model import STEM_TO_LAYER3, EnsembleModule

LAYER4 = STEM_TO_LAYER3  # index of layer4 in the ResNet body (`model[0]`)


def _rescale(cam: np.ndarray) -> np.ndarray:
    """Each map stretched to [0, 1] (an all-zero map stays zero)."""
    low = cam.min(axis=(1, 2), keepdims=True)
    span = cam.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (cam - low) / np.maximum(span, 1e-12), 0.0).astype(np.float32)


def grad_cam(
    model: nn.Module,  # `nn.Sequential(body, head)` or an `EnsembleModule` of them
    xb: torch.Tensor,  # normalised batch, (n, 3, H, W), on the model's device
    layer: nn.Module | None = None,  # defaults to layer4, `model[0][7]`
    target: int | torch.Tensor = 1,  # class explained (1: PNEUMONIA), or one per image
) -> np.ndarray:
    """Grad-CAM heatmaps of `target` for each image: (n, H, W) float32 scaled to [0, 1].

    For an ensemble, the mean of its members' maps (each member explains its own logit).
    """
    if isinstance(model, EnsembleModule):
        return _rescale(np.mean([grad_cam(m, xb, target=target) for m in model.members], axis=0))
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
            targets = torch.as_tensor(target, device=logits.device).expand(len(logits))
            torch.autograd.grad(logits.gather(1, targets.long()[:, None]).sum(), x)
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


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> Image.Image:
    """An RGB picture of a gray image in [0, 1] with its heatmap in [0, 1] (jet) on top."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam)[..., :3]
    mixed = (1 - alpha) * np.repeat(gray[..., None], 3, axis=2) + alpha * heat
    return Image.fromarray((np.clip(mixed, 0, 1) * 255).astype(np.uint8))


def explain(exported: ExportedModel, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """What the model saw (gray, (n, H, W) in [0, 1]) and its Grad-CAM of PNEUMONIA per image."""
    xb = exported.dataloader(images, bs=len(images), num_workers=0).one_batch()
    xb = xb[0] if isinstance(xb, tuple) else xb
    return unnormalize_gray(xb), grad_cam(exported.learner.model, xb)
