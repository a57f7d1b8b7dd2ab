"""Predict NORMAL vs PNEUMONIA for X-ray files, folders and globs with an exported model.

    pneumo-fastai predict exports/pneumo_resnet34.json scans/ "more/*.dcm" --out preds.csv

    from pneumo_fastai import load_model
    model = load_model("exports/pneumo_resnet34.json")         # fastai/torch
    model = load_model("exports/pneumo_resnet34.json", engine="onnx")   # onnxruntime, no torch
    model.predict("scan.dcm").label  # "PNEUMONIA" or "NORMAL" at the card's decision threshold
    preds = model.predict_batch(["a.png", "b.dcm"], bs=32)

`load_model` is the one factory of both engines: `XrayClassifier` here (fastai/torch) and
`onnx_engine.OnnxClassifier`; both are a `classifier.Classifier`, which does everything but
the network's pass. This module imports neither torch nor fastai nor onnxruntime: each engine's
loader is imported when a model of that engine is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from ..errors import PneumoError
from .classifier import Classifier

if TYPE_CHECKING:
    from .loading import ExportedModel

Engine = Literal["torch", "onnx"]


class XrayClassifier(Classifier):
    """The fastai/torch engine: the export's own fastai pipeline and network."""

    def __init__(self, exported: ExportedModel):  # from `load_export`
        super().__init__(exported.card, exported.card_path, exported.config.size)
        self.exported = exported

    def outputs(
        self, images: list[Image.Image], bs: int, tta: bool, features: bool
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        dl = self.exported.dataloader(images, bs=bs, num_workers=0)
        with self.exported.lock, self.exported.learner.no_bar():  # no_bar changes the Learner
            return self.exported.outputs(dl, tta=tta, features=features)


def load_model(
    path: Path | str,  # export: NAME.json, NAME.safetensors, NAME.pkl, or a folder with one card
    trust_pickle: bool = False,  # torch: load the fastai pickle (runs its code) instead
    device: str = "auto",  # torch: auto, cpu, cuda or cuda:N
    precision: str = "auto",  # torch: auto (bf16 where the device runs it faster), fp32, bf16
    engine: Engine = "torch",  # torch (fastai), or onnx (onnxruntime, after `export onnx`)
    threads: int | None = None,  # onnx: intra-op threads (default: onnxruntime's)
) -> Classifier:
    """Load an export, after checking its files' sha256 against the model card, for prediction."""
    if engine == "onnx":
        if trust_pickle:
            raise PneumoError("--trust-pickle loads the fastai pickle; it has no ONNX engine.")
        from .onnx_engine import load_onnx

        return load_onnx(path, threads=threads)
    if engine != "torch":
        raise PneumoError(f"Unknown engine {engine!r}: use torch or onnx.")
    from .loading import load_export

    return XrayClassifier(
        load_export(path, trust_pickle=trust_pickle, device=device, precision=precision)
    )
