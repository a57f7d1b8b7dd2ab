"""pneumo-fastai: a fastai NORMAL vs PNEUMONIA chest X-ray classifier to train, check and serve.

    from pneumo_fastai import TrainConfig, train, load_model
"""

from .config import CLASSES, TrainConfig
from .errors import PneumoError
from .predict import Prediction, XrayClassifier, load_model
from .train import TrainResult, train

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
