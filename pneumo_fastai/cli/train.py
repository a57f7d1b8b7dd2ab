"""`pneumo-fastai train`: options generated from `TrainConfig`, then `training.train` runs.

pneumo-fastai train --data ../shared/data/chest_xray --no-pretrained --epochs 3
"""

from __future__ import annotations

import inspect
import sys
from typing import Annotated, Any

import typer

from ..config import TrainConfig
from ..errors import Aborted, PneumoError
from ..fileio import check_name
from .options import config_parameters, with_parameters

INTERRUPTED_EXIT = 130  # the shell's code for a run ended by Ctrl-C (SIGINT)

_EXTRA = [
    inspect.Parameter(
        "member",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            list[int] | None,
            typer.Option(
                help="With --folds or --seeds: (re)train only this member (0-based; repeat the "
                "option for several). Without it, complete members are kept and the rest trained.",
                show_default=False,
            ),
        ],
    ),
    inspect.Parameter(
        "progress",
        inspect.Parameter.KEYWORD_ONLY,
        default=True,
        annotation=Annotated[bool, typer.Option(help="Show fastai's progress bars.")],
    ),
    inspect.Parameter(
        "gpus",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            int | None,
            typer.Option(
                help="Train on this many GPUs of this machine: starts one process per GPU "
                "through Accelerate (`accelerate launch --multi_gpu`) with the other options.",
                show_default=False,
            ),
        ],
    ),
]


def _train(**options: Any) -> None:
    """Train ResNet34 on the X-ray folder and export NAME.pkl, NAME.safetensors and NAME.json.

    With --folds K or --seeds N, an ensemble: its members in NAME.members/, its card NAME.json.

    Exit status: 0 trained and exported, 2 a usage or data error, 130 interrupted (the best
    epoch so far is still exported, its card marked interrupted).
    """
    progress, gpus, member = options.pop("progress"), options.pop("gpus"), options.pop("member")
    try:
        config = TrainConfig(**options)
    except ValueError as e:
        raise PneumoError(f"Invalid option: {e}.") from e
    check_name(config.name)  # before hours of training, not at the export
    if config.weights is not None and not config.pretrained:
        raise PneumoError(
            "--weights gives ImageNet weights; it cannot be combined with --no-pretrained."
        )
    if gpus is not None:
        from .launch import check_gpus, launch_on_gpus

        check_gpus(gpus, config.device)
        if gpus > 1:
            raise typer.Exit(launch_on_gpus(gpus, sys.argv[1:]))
    if member is not None and not (config.folds or config.seeds):
        raise PneumoError("--member picks members of an ensemble: add --folds K or --seeds N.")
    from ..training.ensemble import train_ensemble
    from ..training.train import train

    try:
        if config.folds or config.seeds:
            train_ensemble(config, members=member, progress=progress)
            return
        result = train(config, progress=progress)
    except KeyboardInterrupt as e:
        raise Aborted("Aborted by a second interrupt; nothing was exported.") from e
    if result.card.training.interrupted:
        raise typer.Exit(INTERRUPTED_EXIT)


train_command = with_parameters(
    _train,
    config_parameters(required=("data",), options={"data": {"envvar": "PNEUMO_DATA"}}) + _EXTRA,
)
