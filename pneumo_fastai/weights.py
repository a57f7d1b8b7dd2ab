"""ImageNet ResNet34 weights: from a local file, the torch hub cache, or a download.

Users online get torchvision's ResNet34 ImageNet weights the way torchvision fetches them
(same URL, same hub cache file, same hash check). Offline, `--weights PATH` takes a local
copy. `PNEUMO_WEIGHTS_URL` overrides the URL (mirrors, tests against a local server).
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet34_Weights

from .errors import WeightsError

WEIGHTS_URL_ENV = "PNEUMO_WEIGHTS_URL"
RESNET34_URL: str = ResNet34_Weights.IMAGENET1K_V1.url
# torchvision ResNet children in the order of fastai's `create_body` (avgpool and fc are cut).
_BODY_PREFIXES: tuple[str, ...] = (
    "conv1",
    "bn1",
    "relu",
    "maxpool",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
)


def weights_url() -> str:
    """The download URL: `PNEUMO_WEIGHTS_URL` when set, else torchvision's."""
    return os.environ.get(WEIGHTS_URL_ENV) or RESNET34_URL


def hub_cache_file(url: str | None = None) -> Path:
    """Where torch hub keeps (and looks for) the downloaded file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url or weights_url()).name


def _offline_help(reason: str) -> str:
    return (
        f"ImageNet weights for ResNet34 could not be obtained ({reason}). Either: "
        f"(1) pass a local copy with --weights PATH (torchvision's {Path(RESNET34_URL).name}); "
        f"(2) put that file at {hub_cache_file()} (the torch hub cache); or "
        "(3) train from scratch with --no-pretrained."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a ResNet34 state dict saved with `torch.save` (tensors only, no code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist. " + _offline_help("no such file"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"{path} is not a loadable PyTorch state dict ({type(e).__name__}: {e}). "
            "Pass torchvision's ResNet34 ImageNet weights file."
        ) from e
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return dict(state)


def download_state_dict(url: str | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Fetch (or reuse from the hub cache) the weights at `url`, checking the hash in its name."""
    url = url or weights_url()
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsError(_offline_help(f"{type(e).__name__}: {e}")) from e


def imagenet_state_dict(
    weights: Path | None = None, progress: bool = True
) -> dict[str, torch.Tensor]:
    """ResNet34 ImageNet weights from `weights` when given, else the hub cache or a download."""
    return (
        read_state_dict(weights) if weights is not None else download_state_dict(progress=progress)
    )


def body_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision keys (`layer1.0.conv1.weight`) to fastai body keys (`4.0.conv1...`)."""
    index = {name: str(i) for i, name in enumerate(_BODY_PREFIXES)}
    out = {}
    for key, value in state.items():
        prefix, _, rest = key.partition(".")
        if prefix in index:
            out[f"{index[prefix]}.{rest}"] = value
    return out


def load_body_weights(body: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy torchvision ResNet34 weights into a fastai body; refuse anything that does not fit."""
    try:
        body.load_state_dict(body_state_dict(state), strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsError(
            f"The weights do not fit a ResNet34 body ({first} ...). Pass torchvision's ResNet34 "
            "ImageNet state dict, or use --no-pretrained."
        ) from e
