"""The `pneumo-fastai` command line: thin option parsing over the package's functions.

pneumo-fastai train --data ../shared/data/chest_xray --no-pretrained --epochs 3
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from .config import TrainConfig
from .errors import Aborted, PneumoError

app = typer.Typer(
    help="Train, evaluate, explain and serve a NORMAL vs PNEUMONIA chest X-ray classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_D = TrainConfig()


@app.callback()
def _group() -> None:
    """Train, evaluate, explain and serve a NORMAL vs PNEUMONIA chest X-ray classifier."""


@app.command()
def train(
    data: Annotated[
        Path,
        typer.Option(
            envvar="PNEUMO_DATA",
            help="Dataset folder in the Kaggle layout: train/{NORMAL,PNEUMONIA}, optional val/ "
            "(merged into train) and test/ (never used for training). Also read from PNEUMO_DATA.",
        ),
    ],
    epochs: Annotated[
        int, typer.Option(help="Maximum epochs; early stopping usually ends sooner.")
    ] = _D.epochs,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without a lower valid loss.")
    ] = _D.patience,
    size: Annotated[
        int, typer.Option(help="Input side in pixels; images are squashed to size x size.")
    ] = _D.size,
    bs: Annotated[
        int,
        typer.Option(
            help="Batch size per process: with N processes (--gpus N, accelerate launch, "
            "torchrun) a step sees N x bs images."
        ),
    ] = _D.bs,
    lr: Annotated[
        float,
        typer.Option(help="Peak one-cycle learning rate (layer4 gets lr/10..lr when pretrained)."),
    ] = _D.lr,
    wd: Annotated[float, typer.Option(help="Weight decay.")] = _D.wd,
    valid_pct: Annotated[
        float, typer.Option(help="Fraction of train+val held out for validation.")
    ] = _D.valid_pct,
    seed: Annotated[
        int, typer.Option(help="Seed for the split, sampling, initialisation and augmentation.")
    ] = _D.seed,
    split: Annotated[
        str,
        typer.Option(
            help="patient: all images of a patient on one side, stratified by class (default). "
            "image: the reference split, a seeded permutation of all images.",
        ),
    ] = _D.split,
    pretrained: Annotated[
        bool,
        typer.Option(
            help="Start from ImageNet weights and freeze the body up to layer4 (layer4 and "
            "the head train). --no-pretrained starts from random weights and trains every "
            "layer, since freezing random layers would make no sense.",
        ),
    ] = _D.pretrained,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Local torchvision ResNet34 ImageNet weights file (for offline machines)."
        ),
    ] = None,
    balanced: Annotated[
        bool, typer.Option(help="Class-balanced sampling of the train loader.")
    ] = _D.balanced,
    class_weighted_loss: Annotated[
        bool, typer.Option(help="Inverse-frequency class weights in the loss.")
    ] = _D.class_weighted_loss,
    label_smoothing: Annotated[
        float, typer.Option(help="Label smoothing (0 turns it off).")
    ] = _D.label_smoothing,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips (never vertical).")] = _D.flip,
    target_sensitivity: Annotated[
        float,
        typer.Option(help="PNEUMONIA sensitivity the decision threshold must reach on validation."),
    ] = _D.target_sensitivity,
    num_workers: Annotated[
        int | None, typer.Option(help="DataLoader workers (default: cores - 1, at most 8).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _D.device,
    cache: Annotated[
        bool | None,
        typer.Option(
            help="Keep decoded, resized images in RAM (default: when they fit in 10% of RAM).",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16/fp16 mixed precision on CUDA, fp32 on CPU), fp32, bf16, fp16."
        ),
    ] = _D.precision,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            help="Channels-last memory format (default: on CUDA only).", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use at most this many images per class (quick runs).")
    ] = None,
    name: Annotated[str, typer.Option(help="Base name of the exported files.")] = _D.name,
    exports: Annotated[
        Path, typer.Option(help="Folder for NAME.pkl, NAME.pth and NAME.json.")
    ] = _D.exports,
    progress: Annotated[bool, typer.Option(help="Show fastai's progress bars.")] = True,
    gpus: Annotated[
        int | None,
        typer.Option(
            help="Train on this many GPUs of this machine: starts one process per GPU through "
            "Accelerate (`accelerate launch --multi_gpu`) with the other options.",
            show_default=False,
        ),
    ] = None,
    sync_bn: Annotated[
        bool | None,
        typer.Option(
            help="With several processes, synchronise BatchNorm statistics across them "
            "(default: on with CUDA; off on CPU, where torch's SyncBatchNorm cannot run).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train ResNet34 on the X-ray folder and export NAME.pkl, NAME.pth and NAME.json."""
    from .distributed import check_gpus, launch_on_gpus
    from .train import train as run_training

    try:
        config = TrainConfig(
            data=data, epochs=epochs, patience=patience, size=size, bs=bs, lr=lr, wd=wd,
            valid_pct=valid_pct, seed=seed, split=split, pretrained=pretrained, weights=weights,
            balanced=balanced, class_weighted_loss=class_weighted_loss,
            label_smoothing=label_smoothing, flip=flip, target_sensitivity=target_sensitivity,
            num_workers=num_workers, device=device, limit=limit, name=name, exports=exports,
            cache=cache, precision=precision, channels_last=channels_last, sync_bn=sync_bn,
        )  # fmt: skip
    except ValueError as e:
        raise PneumoError(f"Invalid option: {e}.") from e
    if weights is not None and not pretrained:
        raise PneumoError(
            "--weights gives ImageNet weights; it cannot be combined with --no-pretrained."
        )
    if gpus is not None:
        check_gpus(gpus, device)
        if gpus > 1:
            raise typer.Exit(launch_on_gpus(gpus, sys.argv[1:]))
    try:
        run_training(config, progress=progress)
    except KeyboardInterrupt as e:
        raise Aborted("Aborted by a second interrupt; nothing was exported.") from e


# commands registered by feature modules
from .cli_data import data_app  # noqa: E402
from .cli_evaluate import evaluate_command, interpret_command  # noqa: E402
from .cli_predict import predict_command  # noqa: E402

app.add_typer(data_app, name="data")
app.command("predict")(predict_command)
app.command("evaluate")(evaluate_command)
app.command("interpret")(interpret_command)


def main() -> None:
    """Console entry point: user mistakes print one paragraph and exit non-zero, no traceback."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
    try:
        app()
    except PneumoError as e:
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
