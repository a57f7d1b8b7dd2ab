"""Predict with onnxruntime: no torch, no fastai, nothing unpickled.

    pneumo-fastai predict exports/pneumo_resnet34.json scans/ --engine onnx --threads 2
    from pneumo_fastai import load_model
    model = load_model("exports/pneumo_resnet34.json", engine="onnx")

Files are decoded by the same code as the torch engine's (`inputs.read_item`: JPEG, PNG, TIFF,
DICOM, error rows for bad files) and prepared by the card's `Preprocessing` (crop, squash,
equalise) into the graph's uint8 input; everything after that is inside the graph (see
`onnx_export.py`). The .onnx file's sha256 is checked against the card before the session is
made. CUDA's execution provider is used where onnxruntime offers it, else the CPU's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from ..card import Card, card_path_of, read_card, verify_file
from ..data.preprocess import Preprocessing, prep_of
from ..errors import ModelFileError, PneumoError
from .classifier import Classifier


class OnnxClassifier(Classifier):
    """The onnxruntime engine: the card's preprocessing in numpy, the rest in the graph."""

    def __init__(self, card: Card, card_path: Path, session: ort.InferenceSession):
        super().__init__(card, card_path, card.input.size)
        self.session = session
        self.prep = Preprocessing(**prep_of(card.input))

    def outputs(
        self, images: list[Image.Image], bs: int, tta: bool, features: bool
    ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        if tta:
            raise PneumoError("Test-time augmentation needs the torch engine (--engine torch).")
        x = np.stack([np.asarray(self.prep(img), dtype=np.uint8)[None] for img in images])
        probs, feats = [], []
        for start in range(0, len(x), bs):
            out = self.session.run(None, {"image": x[start : start + bs]})
            probs.append(out[0])
            if features:
                feats.append(out[1])
        if not features:
            return np.concatenate(probs).astype(np.float64), None
        pooled = np.concatenate(feats)  # (n, networks, d)
        return np.concatenate(probs).astype(np.float64), list(pooled.transpose(1, 0, 2))


def load_onnx(path: Path | str, threads: int | None = None) -> OnnxClassifier:
    """The export's ONNX engine, after checking the .onnx file against the card's sha256."""
    card_path = card_path_of(path)
    card = read_card(card_path)
    if "onnx" not in card.files:
        raise ModelFileError(
            f"{card_path} has no ONNX graph yet: run `pneumo-fastai export onnx {card_path}`."
        )
    onnx_path = verify_file(card, card_path, "onnx")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    return OnnxClassifier(card, card_path, session)
