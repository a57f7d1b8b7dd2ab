"""Export a model (or an ensemble, as one graph) to ONNX, with the card's input contract inside.

    pneumo-fastai export onnx exports/pneumo_resnet34.json   # writes exports/pneumo_resnet34.onnx
    from pneumo_fastai.inference.onnx_export import export_onnx
    card = export_onnx("exports/pneumo_resnet34.json")

The graph takes `image`: uint8, shape (batch, 1, size, size), the prepared gray image (the card's
`input.preprocessing`: crop, squash, equalise, which run in the engine's numpy front end, the
same code the fastai pipeline runs). Inside the graph: to float 0..1, gray to 3 channels, ImageNet
normalisation, the network(s), logits divided by the card's temperature, softmax; for an
ensemble the mean of the members' probabilities. Outputs: `probabilities` (batch, n_classes)
and, when the card has an OOD check, `features` (batch, n_networks, 512), the pooled layer4
features it scores. An ensemble is one graph rather than one file per member: one file to copy
and check, one session, one pass of the front end; its size is the members' together.

The ONNX file's name and sha256 are added to the card (`files.onnx`, and `onnx` with the input
spec and the exporter), after a check that onnxruntime reproduces torch's fp32 probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..card import EnsembleCard, FileEntry, OnnxEntry, OnnxInput, card_path_of, switch_export
from ..data.preprocess import prep_of
from ..errors import ModelFileError, PneumoError
from ..fileio import sha256_file, temps_beside
from ..model import EnsembleModule
from .loading import load_export

DEFAULT_OPSET = 18
PARITY_ATOL = 1e-4  # largest |onnxruntime - torch| probability difference accepted at export


class OnnxGraph(nn.Module):
    """uint8 gray (n, 1, s, s) -> calibrated class probabilities [and pooled features]."""

    def __init__(
        self,
        model: nn.Module,  # a network `Sequential(body, head)` or an `EnsembleModule`
        temperature: float,  # the single network's (an ensemble's members carry their own)
        mean: tuple[float, ...],
        std: tuple[float, ...],
        features: bool,  # also return the pooled features
    ):
        super().__init__()
        ensemble = isinstance(model, EnsembleModule)
        self.networks = model.members if ensemble else nn.ModuleList([model])
        temps = model.temperatures.tolist() if ensemble else [temperature]
        self.register_buffer("temperatures", torch.tensor(temps, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.features = features

    def forward(self, image: torch.Tensor):
        x = image.float() / 255.0
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        probs, pooled = [], []
        for i, net in enumerate(self.networks):
            f = net[1][1](net[1][0](net[0](x)))  # body, average pool, flatten
            probs.append(F.softmax(net[1][2:](f) / self.temperatures[i], dim=1))
            pooled.append(f)
        p = torch.stack(probs).mean(dim=0)
        return (p, torch.stack(pooled, dim=1)) if self.features else p


def _export(graph: OnnxGraph, dummy: torch.Tensor, path: Path, opset: int) -> str:
    """Write the graph with a dynamic batch axis: the dynamo exporter, else TorchScript's."""
    names = ["probabilities", "features"] if graph.features else ["probabilities"]
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(
            graph, (dummy,), str(path), input_names=["image"], output_names=names,
            opset_version=opset, dynamo=True, external_data=False,
            dynamic_shapes={"image": {0: batch}}, verbose=False,
        )  # fmt: skip
        return "torch.onnx.export (dynamo)"
    except Exception:  # the dynamo exporter fails on some graphs and versions: the classic one
        torch.onnx.export(
            graph, (dummy,), str(path), input_names=["image"], output_names=names,
            opset_version=opset, dynamo=False,
            dynamic_axes={n: {0: "batch"} for n in ["image", *names]},
        )  # fmt: skip
        return "torch.onnx.export (TorchScript)"


def export_onnx(
    model: Path | str,  # the export's card (or its .pkl, .safetensors, folder)
    out: Path | str | None = None,  # default: NAME.onnx beside the card
    opset: int = DEFAULT_OPSET,
) -> OnnxEntry:
    """Write the ONNX graph of an export and record it in the card; returns the card's entry."""
    import onnxruntime as ort

    card_path = card_path_of(model)
    if card_path.parent.name.endswith(".members"):
        raise PneumoError(
            f"{card_path} is a member of an ensemble: export the ensemble's card instead (one "
            "graph averages its members), so that the ensemble's checks of its members still hold."
        )
    exported = load_export(card_path, device="cpu", precision="fp32")
    card = exported.card
    out = Path(out) if out is not None else card_path.with_suffix(".onnx")
    if out.parent.resolve() != card_path.parent.resolve():
        raise PneumoError(f"--out must be in the card's folder ({card_path.parent}).")
    size = card.input.size
    graph = OnnxGraph(
        exported.learner.model.eval(), getattr(card, "temperature", 1.0),
        tuple(card.input.normalize.mean), tuple(card.input.normalize.std), card.ood is not None,
    ).eval()  # fmt: skip
    rng = np.random.default_rng(0)
    sample = torch.from_numpy(rng.integers(0, 256, (3, 1, size, size), dtype=np.uint8))
    with torch.inference_mode():
        expected = graph(sample)
    expected = (expected[0] if graph.features else expected).numpy()
    with temps_beside([out]) as (tmp,):
        exporter = _export(graph, sample, tmp, opset)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": sample.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if diff > PARITY_ATOL:
            raise ModelFileError(
                f"The ONNX graph disagrees with torch by {diff:.2e} (> {PARITY_ATOL}); not written."
            )
        digest = sha256_file(tmp)
        entry = OnnxEntry(
            file=out.name,
            opset=opset,
            exporter=exporter,
            parity_max_abs_diff=diff,
            input=OnnxInput(
                name="image",
                shape=["batch", 1, size, size],
                dtype="uint8",
                range=[0, 255],
                size=size,
                resize="squash (bilinear) to size x size",
                preprocessing=prep_of(card.input),
                channels="gray; copied to 3 channels and ImageNet-normalised inside the graph",
            ),
            outputs={
                "probabilities": f"(batch, {len(card.classes)}) calibrated, classes {card.classes}",
                **({"features": "(batch, networks, 512) pooled layer4"} if graph.features else {}),
            },
            networks=len(card.members) if isinstance(card, EnsembleCard) else 1,
        )
        card.files["onnx"] = FileEntry(name=out.name, sha256=digest)
        card.onnx = entry
        switch_export(card_path, {tmp: out}, card)  # the graph first, the card last
    return entry
