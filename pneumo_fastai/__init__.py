"""pneumo-fastai: a fastai NORMAL vs PNEUMONIA chest X-ray classifier you can train, check and serve."""

from .config import CLASSES, TrainConfig
from .errors import PneumoError

__all__ = ["CLASSES", "PneumoError", "TrainConfig"]
__version__ = "0.1.0"
