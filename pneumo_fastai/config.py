"""Every training knob in one typed, frozen place, with the reference defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SplitMode = Literal["patient", "image"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

CLASSES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainConfig:
    """All options of one training run.

    The comment beside or above each field is its help text: `pneumo-fastai train --help` reads
    it from here (fastcore's `docments`), so it is written once.
    """

    # Dataset folder in the Kaggle layout: train/{NORMAL,PNEUMONIA}, optional val/ (merged into
    # train) and test/ (never used for training).
    data: Path | None = None
    exports: Path = Path("exports")  # Folder for NAME.pkl, NAME.pth and NAME.json.
    name: str = "pneumo_resnet34"  # Base name of the exported files.
    seed: int = 42  # Seed for the split, sampling, initialisation and augmentation.
    valid_pct: float = 0.3  # Fraction of train+val held out for validation.
    # patient: all images of a patient on one side, stratified by class (default). image: the
    # reference split, a seeded permutation of all images.
    split: SplitMode = "patient"
    size: int = 224  # Input side in pixels; images are squashed to size x size.
    # Batch size per process: with N processes (--gpus N, accelerate launch, torchrun) a step
    # sees N x bs images.
    bs: int = 32
    epochs: int = 50  # Maximum epochs; early stopping usually ends sooner.
    patience: int = 12  # Stop after this many epochs without a lower valid loss.
    lr: float = 1e-3  # Peak one-cycle learning rate (layer4 gets lr/10..lr when pretrained).
    wd: float = 1e-2  # Weight decay (decoupled, AdamW style).
    label_smoothing: float = 0.1  # Label smoothing (0 turns it off).
    balanced: bool = True  # Class-balanced sampling of the train loader (fastai's WeightedDL).
    class_weighted_loss: bool = False  # Inverse-frequency class weights in the loss.
    # Start from ImageNet weights and freeze the body up to layer4 (layer4 and the head train).
    # --no-pretrained starts from random weights and trains every layer, since freezing random
    # layers would make no sense.
    pretrained: bool = True
    # Local torchvision ResNet34 ImageNet weights file (for offline machines).
    weights: Path | None = None
    flip: bool = False  # Random horizontal flips (never vertical).
    max_rotate: float = 10.0  # Largest random rotation, in degrees.
    max_zoom: float = 1.1  # Largest random zoom factor.
    max_lighting: float = 0.2  # Strength of random brightness and contrast changes.
    hidden: int = 256  # Width of the head's hidden layer.
    dropout_in: float = 0.5  # Dropout before the head's hidden layer.
    dropout_hidden: float = 0.25  # Dropout before the output layer.
    # PNEUMONIA sensitivity the decision threshold must reach on validation.
    target_sensitivity: float = 0.95
    num_workers: int | None = None  # DataLoader workers (default: cores - 1, at most 8).
    # Keep decoded, resized images in RAM (default: when they fit in 10% of RAM).
    cache: bool | None = None
    # auto: bf16 mixed precision on CUDA (fp16 on GPUs without bf16) and on CPUs with bf16
    # instructions where a start-up probe measures it faster; fp32 elsewhere. fp32 and bf16
    # force one; fp16 needs CUDA.
    precision: Precision = "auto"
    # Channels-last memory format (default: on CUDA; on a CPU where the start-up probe measures
    # it faster).
    channels_last: bool | None = None
    # With several processes, synchronise BatchNorm statistics across them (default: on with
    # CUDA; off on CPU, where torch's SyncBatchNorm cannot run).
    sync_bn: bool | None = None
    device: str = "auto"  # auto, cpu, cuda or cuda:N.
    limit: int | None = None  # Use at most this many images per class (quick runs).
    extra: dict[str, Any] = field(default_factory=dict)  # Free-form notes recorded in the card.

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_pct < 1.0:
            raise ValueError(f"valid_pct must be between 0 and 1, got {self.valid_pct}")
        if self.split not in ("patient", "image"):
            raise ValueError(f"split must be 'patient' or 'image', got {self.split!r}")
        if self.size < 32 or self.bs < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError("size must be >= 32 and bs, epochs, patience >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError("target_sensitivity must be in (0, 1]")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        out = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are ignored so older cards still load."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("data", "exports", "weights"):
            if kw.get(key) is not None:
                kw[key] = Path(kw[key])
        return cls(**kw)
