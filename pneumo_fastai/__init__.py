"""pneumo-fastai: a fastai NORMAL vs PNEUMONIA chest X-ray classifier to train, check and serve."""

from .config import CLASSES, TrainConfig
from .errors import PneumoError
from .predict import Prediction, XrayClassifier, load_model

__all__ = ["CLASSES", "PneumoError", "Prediction", "TrainConfig", "XrayClassifier", "load_model"]
__version__ = "0.1.0"
