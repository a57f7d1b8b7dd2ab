"""Every training knob in one typed, frozen place, with the reference defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SplitMode = Literal["patient", "image"]
Equalize = Literal["none", "hist", "clahe"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

CLASSES: tuple[str, str] = ("NORMAL", "PNEUMONIA")  # the binary task, and the folders
SUBTYPES: tuple[str, str, str] = ("NORMAL", "BACTERIA", "VIRUS")  # the subtype task
URL_ENV = "PNEUMO_DATA_URL"  # overrides the dataset download URL (a mirror, a test server)
# `adapt` needs this many usable X-rays of a site: fewer leave its class shares' bootstrap
# interval wider than about +-0.1.
ADAPT_MIN_IMAGES = 100
# `adapt --labels` needs at least this many labelled X-rays of each class: 20 PNEUMONIA is the
# least its threshold rule takes at sensitivity 0.95 (more above it), 10 NORMAL for the
# temperature and a specificity worth reporting.
ADAPT_MIN_PNEUMONIA = 20
ADAPT_MIN_NORMAL = 10
Task = Literal["binary", "subtype"]
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
    # binary: NORMAL vs PNEUMONIA. subtype: NORMAL, BACTERIA, VIRUS from the PNEUMONIA file names
    # (bacteria/virus in the name); P(PNEUMONIA) = P(BACTERIA) + P(VIRUS) gives the decision.
    task: Task = "binary"
    # Folder for the export: NAME.json (the model card), NAME.safetensors, NAME.pkl and the files
    # the card lists.
    exports: Path = Path("exports")
    name: str = "pneumo_resnet34"  # Base name of the exported files.
    seed: int = 42  # Seed for the split, sampling, initialisation and augmentation.
    # Seed of the train/valid split, the folds and --limit's draw alone (default: --seed). The
    # members of a --seeds ensemble share their first seed's split this way.
    split_seed: int | None = None
    valid_pct: float = 0.3  # Fraction of train+val held out for validation.
    # Train an ensemble of K members on patient-grouped, class-stratified folds of train+val,
    # each validating on its own fold; the threshold is chosen on the pooled out-of-fold
    # predictions (0: one model).
    folds: int = 0
    # Train an ensemble of N members on one split, seeds seed, seed+1, ... (0: one model).
    seeds: int = 0
    # For one member of a --folds ensemble: the fold it validates on (set by the ensemble).
    fold: int | None = None
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
    # Decay of an exponential moving average of the weights (Polyak averaging), updated after
    # every step; validation, the best epoch and the export use the average (0: off).
    ema: float = 0.0
    balanced: bool = True  # Class-balanced sampling of the train loader (fastai's WeightedDL).
    class_weighted_loss: bool = False  # Inverse-frequency class weights in the loss.
    # Start from ImageNet weights and freeze the body up to layer4 (layer4 and the head train).
    # --no-pretrained starts from random weights and trains every layer, since freezing random
    # layers would make no sense.
    pretrained: bool = True
    # Local torchvision ResNet34 ImageNet weights file (for offline machines).
    weights: Path | None = None
    flip: bool = False  # Random horizontal flips (never vertical).
    # The augmentation and margin defaults are the recipe bench/quality.py chose (RESULTS.md).
    max_rotate: float = 15.0  # Largest random rotation, in degrees.
    # Smallest random zoom factor: below 1 the image shrinks inside a mirrored border.
    min_zoom: float = 0.9
    # Largest random zoom factor; fastai's zoom also moves the centre, shifting border and marker.
    max_zoom: float = 1.25
    max_warp: float = 0.1  # Strength of random perspective warps (0: none).
    # Smallest random crop of a training image, as a share of its area: each image gets its own
    # crop, anywhere in it, resized back (fastai's RandomResizedCrop; 1: off). Validation and
    # inference always see the whole image.
    min_scale: float = 1.0
    max_lighting: float = 0.3  # Strength of random brightness and contrast changes.
    # Random gamma in [1/(1+g), 1+g], log-uniform, on 3 in 4 images (0: off).
    gamma: float = 0.4
    blur: float = 0.3  # Probability of a random blur or sharpening (0: off).
    noise: float = 0.03  # Largest standard deviation of random gaussian noise, 0..1 scale (0: off).
    # Acquisition-shift augmentation: the share of training images that get each of a random
    # intensity window (black level and white point), a blur or sharpening of their own strength,
    # a constant frame, and a JPEG re-compression at a random quality, so that no global image
    # statistic (exposure, black level, sharpness, border, compression) predicts the label (0: off).
    acquisition: float = 0.0
    # fastai's MixUp: blend pairs of images and labels, Beta(alpha, alpha) weights (0: off).
    mixup: float = 0.0
    # fastai's CutMix: paste a patch of another image, Beta(alpha, alpha) sized (0: off).
    cutmix: float = 0.0
    # MixStyle: the share of training batches whose layer1 and layer2 outputs take, per image,
    # a blend of their own channel statistics and another image's (Zhou et al. 2021; 0: off).
    mixstyle: float = 0.0
    # Fraction of the epochs trained on half-size batches first, then full size (fastai's
    # progressive resizing, within one one-cycle schedule; 0: off).
    progressive: float = 0.0
    # Preprocessing (recorded in the card, applied by every engine): fraction of width and
    # height cut off each side before resizing, where side markers and collimation edges sit.
    crop_margin: float = 0.06
    # Preprocessing: none, hist (global histogram equalisation) or clahe (adaptive, 8x8 tiles).
    equalize: Equalize = "none"
    hidden: int = 256  # Width of the head's hidden layer.
    dropout_in: float = 0.5  # Dropout before the head's hidden layer.
    dropout_hidden: float = 0.25  # Dropout before the output layer.
    # PNEUMONIA sensitivity the decision threshold must reach on validation.
    target_sensitivity: float = 0.95
    # Fit the check that flags inputs unlike the training X-rays (one inference pass over the
    # training split at the end; see `pneumo-fastai predict --ood-policy`).
    ood: bool = True
    # Also write NAME.onnx, the graph onnxruntime runs (see `pneumo-fastai export onnx`).
    onnx: bool = False
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
    # CSV of training images to leave out: a `file` column relative to --data (with a `suspect`
    # column, as `data audit` writes, only the rows marked true). The card records its sha256.
    exclude: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # Free-form notes recorded in the card.

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_pct < 1.0:
            raise ValueError(f"valid_pct must be between 0 and 1, got {self.valid_pct}")
        if self.task not in ("binary", "subtype"):
            raise ValueError(f"task must be binary or subtype, got {self.task!r}")
        if self.split not in ("patient", "image"):
            raise ValueError(f"split must be 'patient' or 'image', got {self.split!r}")
        if self.size < 32 or self.bs < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError("size must be >= 32 and bs, epochs, patience >= 1")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError("target_sensitivity must be in (0, 1]")
        if not 0.0 < self.min_zoom <= self.max_zoom:
            raise ValueError(f"need 0 < min_zoom <= max_zoom, got {self.min_zoom}, {self.max_zoom}")
        if min(self.gamma, self.noise, self.mixup, self.cutmix, self.max_warp) < 0:
            raise ValueError("gamma, noise, mixup, cutmix and max_warp must be >= 0")
        if self.mixup and self.cutmix:
            raise ValueError("mixup and cutmix are alternatives: set one of them")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 <= self.mixstyle <= 1.0:
            raise ValueError(f"mixstyle must be in [0, 1], got {self.mixstyle}")
        if not 0.0 <= self.acquisition <= 1.0:
            raise ValueError(f"acquisition must be in [0, 1], got {self.acquisition}")
        if not 0.0 <= self.blur <= 1.0 or not 0.0 <= self.progressive < 1.0:
            raise ValueError("blur must be in [0, 1] and progressive in [0, 1)")
        if self.folds == 1 or self.folds < 0 or self.seeds == 1 or self.seeds < 0:
            raise ValueError("folds and seeds must be 0 (one model) or at least 2")
        if self.folds and self.seeds:
            raise ValueError("folds and seeds are alternatives: set one of them")
        if self.fold is not None and not 0 <= self.fold < max(self.folds, 1):
            raise ValueError(f"fold must be in [0, folds), got {self.fold} of {self.folds}")
        if not 0.0 <= self.crop_margin < 0.5:
            raise ValueError(f"crop_margin must be in [0, 0.5), got {self.crop_margin}")
        if self.equalize not in ("none", "hist", "clahe"):
            raise ValueError(f"equalize must be none, hist or clahe, got {self.equalize!r}")

    @property
    def splitting_seed(self) -> int:
        """The seed the split, the folds and the per-class limit are drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes the network predicts, in output order."""
        return SUBTYPES if self.task == "subtype" else CLASSES

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
        for key in ("data", "exports", "weights", "exclude"):
            if kw.get(key) is not None:
                kw[key] = Path(kw[key])
        return cls(**kw)
