"""`pneumo-fastai export onnx`: write an export's ONNX graph and record it in its card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import ModelArg

export_app = typer.Typer(
    help="Other formats of an export: onnx (for onnxruntime, without torch or fastai).",
    no_args_is_help=True,
    add_completion=False,
)


@export_app.command()
def onnx(
    model: ModelArg,
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the graph (default: NAME.onnx beside the card)."),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 18,
) -> None:
    """Write NAME.onnx (an ensemble: one graph averaging its members) and add it to the card."""
    from ..inference.onnx_export import export_onnx

    entry = export_onnx(model, out, opset)
    typer.echo(
        f"Wrote {entry.file} (opset {entry.opset}, {entry.exporter}; onnxruntime "
        f"matches torch within {entry.parity_max_abs_diff:.1e}). Predict with: "
        f"pneumo-fastai predict {model} FILES --engine onnx"
    )
