"""Command-line options, each help text written once.

`TrainConfig`'s options come from the dataclass itself: its fields give names, types and defaults
and the comments beside them (read with fastcore's `docments`) give the help, so `train --help`
can never drift from the config. The inference options shared by predict, evaluate, interpret and
serve are declared here once. Nothing here imports torch or fastai.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from fastcore.docments import docments

from ..config import TrainConfig

ModelArg = Annotated[
    Path,
    typer.Argument(
        help="The export to use: NAME.json (its model card), NAME.safetensors or NAME.pkl; "
        "the files sit side by side."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[
    Literal["auto", "fp32", "bf16"],
    typer.Option(
        help="auto: bf16 on CUDA and on CPUs where bf16 measures faster, else fp32. fp32 gives "
        "the exact figures other engines are checked against; bf16 forces bf16."
    ),
]
EngineOpt = Annotated[
    Literal["torch", "onnx"],
    typer.Option(
        help="torch: the fastai export. onnx: onnxruntime on the NAME.onnx that `pneumo-fastai "
        "export onnx` wrote; imports neither torch nor fastai."
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(min=1, help="onnx engine: intra-op threads (default: onnxruntime's choice)."),
]
PickleOpt = Annotated[
    bool,
    typer.Option(
        help="Load the fastai pickle (NAME.pkl), which runs code stored in the file (only for "
        "files you trust), instead of the weights-only NAME.safetensors. Both are checked "
        "against the card's sha256 first."
    ),
]
BsOpt = Annotated[int, typer.Option(min=1, help="Batch size for inference.")]
WorkersOpt = Annotated[
    int | None, typer.Option(help="DataLoader workers (default: cores - 1, at most 8).")
]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="PNEUMO_DATA",
        help="Dataset root in the Kaggle layout; its test/ split is used. Also read from "
        "PNEUMO_DATA.",
    ),
]
TestOpt = Annotated[
    Path | None,
    typer.Option(help="Any folder with NORMAL/ and PNEUMONIA/ sub-folders (instead of --data)."),
]


def field_help() -> dict[str, str]:
    """Each `TrainConfig` field's help text, from the comments in `config.py`."""
    return {k: " ".join(v.split()) for k, v in docments(TrainConfig).items() if v}


def config_parameters(
    skip: tuple[str, ...] = ("extra",),  # fields that are no command-line option
    required: tuple[str, ...] = (),  # fields the command line must give (no default)
    options: Mapping[str, Mapping[str, Any]] | None = None,  # extra typer.Option args per field
) -> list[inspect.Parameter]:
    """Keyword parameters with typer annotations, one per `TrainConfig` field, in field order."""
    hints = typing.get_type_hints(TrainConfig)
    helps = field_help()
    options = options or {}
    params = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        extra = dict(options.get(f.name, {}))
        if default is None or f.name in required:
            extra.setdefault("show_default", False)
        option = typer.Option(help=helps.get(f.name, ""), **extra)
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if f.name in required else default,
                annotation=Annotated[hint, option],
            )
        )
    return params


def with_parameters(
    func: Callable[..., Any], params: list[inspect.Parameter]
) -> Callable[..., Any]:
    """`func` (taking **kwargs) presented to typer with the signature `params`."""
    func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return func
