"""`pneumo-fastai predict`: thin option parsing and printing over `inference.predict`.

pneumo-fastai predict exports/pneumo_resnet34.json scans/ "more/*.dcm" --out preds.csv
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from ..inference.results import OUTPUT_COLUMNS, Prediction
from .options import BsOpt, DeviceOpt, EngineOpt, ModelArg, PickleOpt, PrecisionOpt, ThreadsOpt


def predict_command(
    model: ModelArg,
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files (JPEG, PNG, TIFF, DICOM), folders (searched recursively for those "
            "suffixes and for DICOM files without one) and glob patterns such as 'scans/**/*.dcm'.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Also write the results to this file: .csv or .jsonl (one JSON object per line), "
            f"columns {', '.join(OUTPUT_COLUMNS)}."
        ),
    ] = None,
    tta: Annotated[
        bool, typer.Option(help="Average over test-time augmentation (slower, not seeded).")
    ] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    bs: BsOpt = 32,
    trust_pickle: PickleOpt = False,
    engine: EngineOpt = "torch",
    threads: ThreadsOpt = None,
    ood_policy: Annotated[
        Literal["flag", "skip", "fail"],
        typer.Option(
            help="Images unlike the training X-rays (OOD): flag them (ood=true, the answer "
            "kept), skip their answer (left empty), or fail (every row written, exit status 1)."
        ),
    ] = "flag",
) -> None:
    """Predict NORMAL vs PNEUMONIA for X-ray images with an exported model.

    Files that cannot be read get an error row; the others are still predicted.

    Exit status: 0 every file predicted, 1 some file failed (or, with --ood-policy fail, was
    flagged as unlike the training X-rays), 2 usage error (e.g. a missing model).
    """
    from rich.console import Console

    from ..inference.inputs import expand_inputs
    from ..inference.predict import load_model
    from ..inference.results import check_output_path, write_predictions
    from ..progress import track
    from .render import print_predictions

    if out is not None:
        check_output_path(out)
    files = expand_inputs(paths)
    classifier = load_model(
        model, trust_pickle=trust_pickle, device=device, precision=precision, engine=engine,
        threads=threads,
    )  # fmt: skip
    preds = list(
        track(classifier.iter_predictions(files, bs=bs, tta=tta), len(files), "Predicting",
              stderr=True)
    )  # fmt: skip
    console = Console()
    if classifier.ood is None:
        console.print(
            "Note: this export has no OOD check (trained before it existed, or with --no-ood): "
            "the ood column is empty, unknown.",
            style="yellow",
        )
    if ood_policy == "skip":
        preds = [withhold(p) if p.ood else p for p in preds]
    print_predictions(preds, classifier.threshold, console)
    if out is not None:
        write_predictions(preds, out)
        console.print(f"Wrote {out}.")
    if any(not p.ok for p in preds) or (ood_policy == "fail" and any(p.ood for p in preds)):
        raise typer.Exit(1)


def withhold(pred: Prediction) -> Prediction:
    """A flagged prediction with its answer left out (`--ood-policy skip`)."""
    per_class = pred.class_probabilities
    return replace(
        pred, probability=None, label=None, label_argmax=None,
        class_probabilities=None if per_class is None else dict.fromkeys(per_class),
    )  # fmt: skip
