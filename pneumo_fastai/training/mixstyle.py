"""MixStyle (Zhou et al., ICLR 2021): mix the feature statistics of pairs of training images.

A convolutional feature map's mean and standard deviation per channel, taken over the image,
carry much of an image's "style": exposure, contrast, sharpness, the acquisition's look. With
probability `p` per batch, the outputs of ResNet's layer1 and layer2 are normalised per image
and channel, then given a blend of their own statistics and those of another image of the batch
(weights drawn from Beta(alpha, alpha) per image), so that the style of an image stops predicting
its label and the layers after learn from content. The hooks live only during `fit` and act only
in training mode: validation, the export and every engine see the plain network.
"""

from __future__ import annotations

import torch
from fastai.callback.core import Callback
from torch import nn

from ..model import BODY_LAYERS

LAYERS = (BODY_LAYERS["layer1"], BODY_LAYERS["layer2"])  # the body indices the hooks go on
EPS = 1e-6


def mix_styles(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """`x` (n, c, h, w) normalised per image and channel, then given the statistics
    `lam * own + (1 - lam) * those of image perm[i]` (`lam`: (n, 1, 1, 1); `perm`: (n,))."""
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sigma = (x.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
    return (x - mu) / sigma * sigma_mix + mu_mix


class MixStyle(Callback):
    """Apply `mix_styles` after layer1 and layer2 to a share `p` of the training batches."""

    def __init__(self, p: float, alpha: float = 0.1):  # share of batches; Beta(alpha, alpha)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {p}")
        self.p, self.alpha = p, alpha

    def before_fit(self) -> None:
        model = getattr(self.learn.model, "module", self.learn.model)  # under DDP, the inner one
        self.hooks = [model[0][i].register_forward_hook(self._hook) for i in LAYERS]
        self.active = False

    def before_batch(self) -> None:
        self.active = self.training and torch.rand(()).item() < self.p

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        n = output.shape[0]
        if not (self.active and module.training and n > 1):
            return None
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((n, 1, 1, 1))
        perm = torch.randperm(n, device=output.device)
        return mix_styles(output, lam.to(output.device, output.dtype), perm)

    def after_fit(self) -> None:
        for hook in self.hooks:
            hook.remove()
