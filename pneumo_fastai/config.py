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
    """All options of one training run; the CLI maps its flags onto these fields."""

    data: Path | None = None  # dataset root in the Kaggle layout (train/, optional val/ and test/)
    exports: Path = Path("exports")  # folder that receives NAME.pkl, NAME.json, NAME.pth
    name: str = "pneumo_resnet34"  # base name of the exported files
    seed: int = 42  # seeds the split, the balanced sampler, weights init and augmentation
    valid_pct: float = 0.3  # fraction of train+val images held out for validation
    split: SplitMode = "patient"  # `patient`: patient-grouped, stratified; `image`: reference split
    size: int = 224  # square input side in pixels (images are squashed to it)
    bs: int = 32  # batch size
    epochs: int = 50  # upper bound on epochs; early stopping usually ends sooner
    patience: int = 12  # epochs without a better valid loss before stopping
    lr: float = 1e-3  # peak learning rate of the one-cycle schedule
    wd: float = 1e-2  # decoupled weight decay
    label_smoothing: float = 0.1  # 0 turns label smoothing off
    balanced: bool = True  # class-balanced WeightedDL for the train loader
    class_weighted_loss: bool = False  # inverse-frequency class weights in the loss
    pretrained: bool = True  # start from ImageNet weights and freeze the body up to layer4
    weights: Path | None = None  # local ResNet34 ImageNet state dict (offline alternative)
    flip: bool = False  # horizontal flips in augmentation (never vertical)
    max_rotate: float = 10.0  # degrees
    max_zoom: float = 1.1
    max_lighting: float = 0.2  # brightness/contrast jitter
    hidden: int = 256  # head's hidden width
    dropout_in: float = 0.5  # dropout before the hidden layer
    dropout_hidden: float = 0.25  # dropout before the output layer
    target_sensitivity: float = 0.95  # PNEUMONIA sensitivity the decision threshold must reach
    num_workers: int | None = None  # DataLoader workers; None picks from the CPU count
    cache: bool | None = None  # decoded images in RAM; None: when they fit in 10% of RAM
    precision: Precision = "auto"  # auto: bf16 (or fp16) mixed precision on CUDA, fp32 on CPU
    channels_last: bool | None = None  # NHWC memory format; None: on CUDA only
    sync_bn: bool | None = None  # several processes: SyncBatchNorm; None: on CUDA, off on CPU
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    limit: int | None = None  # keep at most this many images per class (quick runs, notebooks)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded in the card

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
