"""The `pneumo-fastai` command line: thin option parsing over the package's functions.

pneumo-fastai train --data ../shared/data/chest_xray --no-pretrained --epochs 3

Each command imports torch, fastai and the rest of the package only when it runs, so that
`pneumo-fastai --help` and `pneumo-fastai CMD --help` answer at once.
"""

from __future__ import annotations

import sys
import warnings

import typer

from ..errors import PneumoError
from .adapt import adapt_command
from .data import data_app
from .evaluate import evaluate_command, interpret_command
from .export import export_app
from .predict import predict_command
from .serve import serve_command
from .train import train_command

# what an install without an extra lacks, and the extra that brings it
EXTRAS = {
    "torch": "torch", "torchvision": "torch", "fastai": "torch", "accelerate": "torch",
    "sklearn": "torch", "scipy": "torch", "matplotlib": "torch", "onnxruntime": "onnx",
    "onnx": "onnx", "onnxscript": "onnx", "skimage": "clahe",
}  # fmt: skip
HELP = "Train, evaluate, explain and serve a NORMAL vs PNEUMONIA chest X-ray classifier."

app = typer.Typer(
    help=HELP, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False
)
app.command("train")(train_command)
app.command("predict")(predict_command)
app.command("evaluate")(evaluate_command)
app.command("interpret")(interpret_command)
app.command("serve")(serve_command)
app.command("adapt")(adapt_command)
app.add_typer(data_app, name="data")
app.add_typer(export_app, name="export")


def main() -> None:
    """Console entry point: user mistakes print one paragraph and exit non-zero, no traceback."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
    # fastai's import scripts a function with torch.jit, which torch 2.14 deprecates
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    try:
        app()
    except PneumoError as e:
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(e.exit_code)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        typer.secho(
            f"Error: this command needs {e.name}, from the optional extra [{extra}]: "
            f"pip install 'pneumo-fastai[{extra}]' (or pip install -e '.[{extra}]' in a checkout).",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(2)
