"""ResNet34 body + the custom head, the three parameter groups, and the `Learner`.

Parameter groups are [stem..layer3], [layer4], [head]: "frozen up to layer4" freezes group 0
only (fastai's own ResNet split would put layer3 with layer4). The Learner's epoch metrics
(`learner_metrics`) are fastai `AccumMetric`s around `figures.epoch_metrics`' functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import AccumMetric, ActivationType, accuracy
from fastai.optimizer import Adam
from fastai.torch_core import params
from fastai.vision.learner import create_vision_model, vision_learner
from torch import nn
from torchvision.models import resnet34

from .config import TrainConfig
from .figures.epoch_metrics import (
    balanced_accuracy,
    collapsed,
    f1_pneumonia,
    macro_auc,
    recall_normal,
    recall_pneumonia,
    roc_auc,
)
from .weights import load_body_weights

RESNET34_FEATURES = 512
# Index of each residual stage among the fastai ResNet body's children (`model[0]`); the stem
# (conv1, bn1, relu, maxpool) is children 0-3.
BODY_LAYERS: dict[str, int] = {"layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
STEM_TO_LAYER3 = BODY_LAYERS["layer4"]  # children of the fastai ResNet body before layer4


def learner_metrics(n_classes: int = 2) -> list:
    """Metrics shown each epoch: accuracy, recall of NORMAL and PNEUMONIA, F1 (PNEUMONIA),
    ROC AUC of P(PNEUMONIA); with more classes, also balanced accuracy and macro AUC."""
    argmax = dict(dim_argmax=-1, to_np=True, invert_arg=True)
    if n_classes == 2:
        return [
            accuracy,
            AccumMetric(recall_normal, name="recall_normal", **argmax),
            AccumMetric(recall_pneumonia, name="recall_pneumonia", **argmax),
            AccumMetric(f1_pneumonia, name="f1", **argmax),
            AccumMetric(roc_auc, name="roc_auc", activation=ActivationType.BinarySoftmax, **argmax),
        ]
    softmax = dict(
        activation=ActivationType.Softmax, dim_argmax=-1, to_np=True, invert_arg=True, flatten=False
    )
    return [
        accuracy,
        AccumMetric(balanced_accuracy, name="balanced_accuracy", **argmax),
        AccumMetric(collapsed(recall_normal), name="recall_normal", **argmax),
        AccumMetric(collapsed(recall_pneumonia), name="recall_pneumonia", **argmax),
        AccumMetric(collapsed(f1_pneumonia), name="f1", **argmax),
        AccumMetric(collapsed(roc_auc), name="roc_auc", **softmax),
        AccumMetric(macro_auc, name="macro_auc", **softmax),
    ]


def xray_head(
    n_features: int = RESNET34_FEATURES,  # channels out of the body
    hidden: int = 256,  # hidden width
    n_out: int = 2,  # classes
    p_in: float = 0.5,  # dropout before the hidden layer
    p_hidden: float = 0.25,  # dropout before the output layer
) -> nn.Sequential:
    """Average pool -> Dropout -> Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(p_in),
        nn.Linear(n_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(p_hidden),
        nn.Linear(hidden, n_out),
    )


def _layer_name(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features},{layer.out_features})"
    if isinstance(layer, nn.Dropout):
        return f"Dropout({layer.p:g})"
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return "AdaptiveAvgPool"
    return type(layer).__name__


def describe(module: nn.Sequential) -> str:
    """One line naming each layer of `module` in order (the card's head description)."""
    return " -> ".join(_layer_name(layer) for layer in module)


def layer4_splitter(model: nn.Module) -> list:
    """Parameter groups [stem..layer3], [layer4], [head]."""
    body, head = model[0], model[1]
    return [params(body[:STEM_TO_LAYER3]), params(body[STEM_TO_LAYER3:]), params(head)]


def build_head(config: TrainConfig, n_out: int = 2) -> nn.Sequential:
    """`xray_head` with the config's hidden width and dropouts, for `n_out` classes."""
    return xray_head(
        RESNET34_FEATURES, config.hidden, n_out, config.dropout_in, config.dropout_hidden
    )


def build_model(config: TrainConfig, n_out: int = 2) -> nn.Sequential:
    """The randomly initialised ResNet34 + head network, as `nn.Sequential(body, head)`."""
    return create_vision_model(
        resnet34, n_out, pretrained=False, custom_head=build_head(config, n_out)
    )


class TemperedCrossEntropy(CrossEntropyLossFlat):
    """fastai's flat cross-entropy whose activation is softmax(logits / temperature).

    The temperature is 1 while training; temperature scaling sets it after training, so that
    `learn.predict`, `get_preds` and `tta` on the export give calibrated probabilities.
    """

    def __init__(self, *args, temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x / getattr(self, "temperature", 1.0), dim=self.axis)


def build_loss(
    config: TrainConfig, class_weight: np.ndarray | None = None, temperature: float = 1.0
) -> TemperedCrossEntropy:
    """Cross-entropy with the config's label smoothing and optional class weights."""
    weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float32)
    return TemperedCrossEntropy(
        weight=weight, label_smoothing=config.label_smoothing, temperature=temperature
    )


def build_learner(
    dls: DataLoaders,
    config: TrainConfig,
    imagenet_state: Mapping[str, torch.Tensor] | None = None,  # torchvision ResNet34 weights
    class_weight: np.ndarray | None = None,  # loss weight per class, or None
    opt_func: Callable = Adam,  # fastai optimizer (training passes its fused Adam)
) -> Learner:
    """`vision_learner` with the custom head and splitter; frozen up to layer4 when pretrained."""
    learn = vision_learner(
        dls,
        resnet34,
        normalize=False,  # our batch transforms always normalise with ImageNet statistics
        pretrained=False,  # weights come from `imagenet_state`, loaded below
        custom_head=build_head(config, dls.c),
        splitter=layer4_splitter,
        loss_func=build_loss(config, class_weight),
        metrics=learner_metrics(dls.c),
        opt_func=opt_func,
        wd=config.wd,
    )
    if imagenet_state is not None:
        load_body_weights(learn.model[0], imagenet_state)
        learn.freeze_to(1)
    return learn


class EnsembleModule(nn.Module):
    """Several networks as one: the log of the mean of their tempered softmax outputs.

    `softmax` of the output is the mean of the members' calibrated probabilities, so fastai's
    `get_preds`, `tta` and `ClassificationInterpretation` see the ensemble as one model; the loss
    on the output is the negative log-likelihood of that mean.
    """

    def __init__(self, members: list[nn.Module], temperatures: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [
            F.softmax(m(x).float() / t, dim=-1)
            for m, t in zip(self.members, self.temperatures, strict=True)
        ]
        return torch.log(torch.stack(probs).mean(dim=0).clamp_min(1e-12))


# Exports pickled before the epoch metrics moved out of this module (0.1.0) name them
# `pneumo_fastai.model._NAME`; pickle looks them up here (PEP 562), so those exports still load.
_MOVED_METRICS: dict[str, Callable[..., float]] = {
    "_recall_normal": recall_normal,
    "_recall_pneumonia": recall_pneumonia,
    "_f1_pneumonia": f1_pneumonia,
    "_roc_auc": roc_auc,
    "_subtype_recall_normal": collapsed(recall_normal),
    "_subtype_recall_pneumonia": collapsed(recall_pneumonia),
    "_subtype_f1_pneumonia": collapsed(f1_pneumonia),
    "_subtype_roc_auc": collapsed(roc_auc),
    "_balanced_accuracy": balanced_accuracy,
    "_macro_auc": macro_auc,
}


def __getattr__(name: str) -> Any:
    if name in _MOVED_METRICS:
        return _MOVED_METRICS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
