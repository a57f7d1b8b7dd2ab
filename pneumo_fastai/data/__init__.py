"""From a dataset folder to fastai `DataLoaders`: images, layout, names, split, cache, block.

- `images`: any X-ray file (JPEG, PNG, TIFF, DICOM) as an 8-bit gray image; the readability check.
- `layout`: the Kaggle folder layout (roots, splits, class folders, counts).
- `names`: classes from folders, patient ids from Kermany file names.
- `split`: the seeded, patient-grouped train/valid split.
- `cache`: decoded images in RAM for training.
- `block`: the fastai `DataBlock` and `DataLoaders` (imports fastai; the others do not).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Exports pickled before the `data` package existed name these as `pneumo_fastai.data.X`;
# they resolve lazily, so that importing `pneumo_fastai.data.layout` does not import fastai.
_MOVED = {
    "LoadXray": "block",
    "XrayImage": "block",
    "SeededSplitter": "split",
    "label_of": "names",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(import_module(f"{__name__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
