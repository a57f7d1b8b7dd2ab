"""`pneumo-fastai evaluate` and `pneumo-fastai interpret`: option parsing and printing only.

pneumo-fastai evaluate exports/pneumo_resnet34.json --data data/chest_xray --tta
pneumo-fastai interpret exports/pneumo_resnet34.json --test path/to/folder --n 12
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from .options import (
    BsOpt,
    DataOpt,
    DeviceOpt,
    ModelArg,
    PickleOpt,
    PrecisionOpt,
    ProgressOpt,
    TestOpt,
    WorkersOpt,
)

OutOpt = Annotated[
    Path | None, typer.Option(help="Report folder (default reports/NAME/); plots go to plots/.")
]
NOpt = Annotated[int, typer.Option(help="Top losses to plot and explain with Grad-CAM.")]
TargetOpt = Annotated[
    float | None,
    typer.Option(
        help="Also report a threshold re-chosen on the validation predictions beside the card "
        "(NAME.valid.csv) to reach this PNEUMONIA sensitivity; never chosen on test."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed for the bootstrap, TTA and the Grad-CAM sample.")]


def evaluate_command(
    model: ModelArg,
    data: DataOpt = None,
    test: TestOpt = None,
    out: OutOpt = None,
    tta: Annotated[
        bool, typer.Option(help="Also report fastai test-time augmentation beside plain inference.")
    ] = False,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for each 95% interval.")] = 1000,
    target_sensitivity: TargetOpt = None,
    n: NOpt = 9,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    trust_pickle: PickleOpt = False,
    bs: BsOpt = 64,
    num_workers: WorkersOpt = None,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
) -> None:
    """Evaluate an export on a test folder: figures with CIs, predictions, plots and reports."""
    from ..evaluation.evaluate import REPORTS, evaluate
    from ..evaluation.plots import PLOTS, draw_all
    from ..evaluation.report import write_report
    from .render import print_evaluation

    ev = evaluate(
        model, data, test, trust_pickle=trust_pickle, device=device, precision=precision, bs=bs,
        num_workers=num_workers, tta=tta, target_sensitivity=target_sensitivity, n_boot=n_boot,
        seed=seed, progress=progress,
    )  # fmt: skip
    out_dir = out if out is not None else REPORTS / ev.run.name
    plots = draw_all(ev.run, out_dir / PLOTS, n_top=n, seed=seed, progress=progress)
    files = write_report(ev, plots, out_dir)
    print_evaluation(ev, files)


def interpret_command(
    model: ModelArg,
    data: DataOpt = None,
    test: TestOpt = None,
    out: OutOpt = None,
    n: NOpt = 9,
    target_sensitivity: TargetOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    trust_pickle: PickleOpt = False,
    bs: BsOpt = 64,
    num_workers: WorkersOpt = None,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
    cam_layer: Annotated[
        Literal["layer4", "layer3"],
        typer.Option(
            help="The layer Grad-CAM explains: layer4, a grid of the input side / 32 (2x2 at "
            "64 px); layer3, / 16 (4x4 at 64 px), finer but from less class-specific features.",
        ),
    ] = "layer4",
) -> None:
    """Only the plots (quicker): confusion matrices, top losses, curves and Grad-CAM."""
    from ..evaluation.plots import interpret

    plots = interpret(
        model, data, test, out, n=n, trust_pickle=trust_pickle, device=device,
        precision=precision, bs=bs, num_workers=num_workers,
        target_sensitivity=target_sensitivity, seed=seed, progress=progress, cam_layer=cam_layer,
    )  # fmt: skip
    for path in plots.values():
        typer.echo(f"Wrote {path}")
