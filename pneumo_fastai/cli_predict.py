"""`pneumo-fastai predict`: thin option parsing and printing over `pneumo_fastai.predict`.

pneumo-fastai predict exports/pneumo_resnet34.json scans/ "more/*.dcm" --out preds.csv
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text


def predict_command(
    model: Annotated[
        Path,
        typer.Argument(
            help="The export to use: NAME.json, NAME.pth or NAME.pkl (the three sit side by side)."
        ),
    ],
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
            "columns file, probability, prediction, prediction_argmax, error."
        ),
    ] = None,
    tta: Annotated[
        bool, typer.Option(help="Average over test-time augmentation (slower, not seeded).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bs: Annotated[int, typer.Option(min=1, help="Batch size.")] = 32,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            help="Load the fastai pickle (NAME.pkl), which runs code from the file, instead of "
            "the weights-only NAME.pth. Both are checked against the card's sha256 first.",
        ),
    ] = False,
) -> None:
    """Predict NORMAL vs PNEUMONIA for X-ray images with an exported model.

    Files that cannot be read get an error row; the others are still predicted.

    Exit status: 0 every file predicted, 1 some file failed, 2 usage error (e.g. missing model).
    """
    from .predict import check_output_path, expand_inputs, load_model, write_predictions

    if out is not None:
        check_output_path(out)
    files = expand_inputs(paths)
    classifier = load_model(model, trust_pickle=trust_pickle, device=device)
    progress = Progress(
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task("Predicting", total=len(files))
        preds = []
        for pred in classifier.iter_predictions(files, bs=bs, tta=tta):
            preds.append(pred)
            progress.advance(task)

    negative, positive = classifier.classes
    table = Table(
        Column("File", overflow="fold"),
        Column("P(PNEUMONIA)", justify="right"),
        "Prediction",
        "Argmax",
        Column("Error", overflow="fold"),
        caption=f"Prediction: {positive} where P({positive}) >= {classifier.threshold:.4g}, the "
        "model card's decision threshold. Argmax: where P >= 0.5.",
    )
    for p in preds:
        prob = "" if p.probability is None else f"{p.probability:.4f}"
        file, error = Text(p.file or ""), Text(p.error or "")  # Text: no markup in file names
        table.add_row(file, prob, p.label, p.label_argmax, error, style=None if p.ok else "red")
    console = Console()
    console.print(table)
    failed = sum(not p.ok for p in preds)
    n_positive = sum(p.label == positive for p in preds)
    console.print(
        f"{len(preds)} files: {n_positive} {positive}, {len(preds) - n_positive - failed} "
        f"{negative}, {failed} could not be read."
    )
    if out is not None:
        write_predictions(preds, out)
        console.print(f"Wrote {out}.")
    if failed:
        raise typer.Exit(1)
