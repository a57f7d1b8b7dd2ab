"""pneumo-fastai: a fastai NORMAL vs PNEUMONIA chest X-ray classifier to train, check and serve.

from pneumo_fastai import TrainConfig, train, load_model
"""

import warnings

# fastai's import scripts a function with torch.jit, which torch 2.14 deprecates: not ours to fix.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)

from .config import CLASSES, TrainConfig  # noqa: E402
from .errors import PneumoError  # noqa: E402
from .predict import Prediction, XrayClassifier, load_model  # noqa: E402
from .train import TrainResult, train  # noqa: E402

__all__ = [
    "CLASSES",
    "PneumoError",
    "Prediction",
    "TrainConfig",
    "TrainResult",
    "XrayClassifier",
    "load_model",
    "train",
]
__version__ = "0.1.0"
