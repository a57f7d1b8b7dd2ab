"""pneumo-fastai: a fastai NORMAL vs PNEUMONIA chest X-ray classifier to train, check and serve.

from pneumo_fastai import TrainConfig, train, train_ensemble, load_model

Names are imported when first used, so `import pneumo_fastai` (and the command line's `--help`)
does not pull in torch or fastai, and inference never imports the training code.
"""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import Any

# fastai's import scripts a function with torch.jit, which torch 2.14 deprecates: not ours to fix.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)

_PUBLIC = {
    "CLASSES": "config",
    "TrainConfig": "config",
    "PneumoError": "errors",
    "Prediction": "inference.results",
    "XrayClassifier": "inference.predict",
    "load_model": "inference.predict",
    "TrainResult": "training.train",
    "train": "training.train",
    "train_ensemble": "training.ensemble",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
