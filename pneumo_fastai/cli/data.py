"""`pneumo-fastai data download | check | prepare | holdout | audit`: the dataset's tools.

    pneumo-fastai data download --dest data/
    pneumo-fastai data check data/chest_xray --json check.json
    pneumo-fastai data prepare data/chest_xray --size 256
    pneumo-fastai data holdout data/chest_xray --out data/holdout --pct 0.15
    pneumo-fastai data audit exports/ens.json --out reports/ens-audit

`cli/__init__.py` mounts `data_app` as `data`; a `PneumoError` raised here is printed there,
without a traceback, with exit code 2. Each command imports its worker only when it runs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..config import URL_ENV, TrainConfig
from ..errors import DataError, PneumoError

data_app = typer.Typer(
    help="Fetch (download), check, pre-resize (prepare) and split off a patient-disjoint test "
    "set (holdout) of the chest X-ray dataset, and find likely label errors (audit).",
    no_args_is_help=True,
    add_completion=False,
)

_D = TrainConfig()
_SHOWN = 20  # failed files listed by `prepare` and `audit` before "... and N more"
_AUDIT_NEEDS = ("cleanlab", "matplotlib", "sklearn")  # what the [audit] extra installs


class DataSource(str, Enum):
    mendeley = "mendeley"
    kaggle = "kaggle"


@data_app.command()
def download(
    dest: Annotated[
        Path, typer.Option(help="Folder that receives chest_xray/ (created if needed).")
    ] = Path("data"),
    source: Annotated[
        DataSource,
        typer.Option(
            help="mendeley: the authors' public archive, no account needed. kaggle: Kaggle's "
            "copy (with its 16-image val/) through the optional kagglehub package."
        ),
    ] = DataSource.mendeley,
    url: Annotated[
        str | None,
        typer.Option(
            help=f"Download ChestXRay2017.zip from this URL instead (a mirror). Also read from "
            f"{URL_ENV}.",
            show_default=False,
        ),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(
            help="Expected sha256 of the archive, to accept a different zip on purpose "
            "(default: the published release's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download the Kermany et al. chest X-rays (CC BY 4.0) into DEST/chest_xray."""
    from ..datatools.download import CITATION_TEXT, LICENSE_TEXT, download_dataset

    console = Console(soft_wrap=True)  # long paths stay whole, copy-pasteable
    result = download_dataset(dest, source=source.value, url=url, sha256=sha256)
    if result.already_present:
        console.print(f"Already downloaded: {result.root} (from {result.origin}).")
    counts = ", ".join(
        f"{split} {c['NORMAL']:,} NORMAL / {c['PNEUMONIA']:,} PNEUMONIA"
        for split, c in result.counts.items()
    )
    console.print(f"Dataset ready at {result.root}: {counts}.", highlight=False)
    console.print(f"\n{LICENSE_TEXT}\nPlease cite:\n{CITATION_TEXT}", highlight=False)
    console.print(f"Train on it with: pneumo-fastai train --data {result.root}", highlight=False)


@data_app.command()
def check(
    path: Annotated[Path, typer.Argument(help="Dataset folder (train/, optional val/ and test/).")],
    json_file: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the full report here as JSON.", show_default=False),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Read headers only: faster, but no duplicate search.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the training split to preview.")] = _D.seed,
    valid_pct: Annotated[
        float, typer.Option(help="Validation fraction of the training split to preview.")
    ] = _D.valid_pct,
) -> None:
    """Report counts, bad files, duplicates and patient leakage; exit 2 if training is unsound."""
    from ..datatools.check import check_dataset
    from .render import print_dataset_report

    console = Console(soft_wrap=True)  # long paths stay whole, copy-pasteable
    config = TrainConfig(seed=seed, valid_pct=valid_pct)
    report = check_dataset(path, quick=quick, config=config, progress=True)
    print_dataset_report(report, console)
    if json_file is not None:
        console.print(f"Report written to {report.write_json(json_file)}", highlight=False)
    if report.problems:
        raise typer.Exit(code=DataError.exit_code)


@data_app.command()
def prepare(
    path: Annotated[Path, typer.Argument(help="Dataset folder (train/, optional val/ and test/).")],
    size: Annotated[
        int, typer.Option(help="Shorter side of the copies in pixels (never enlarged).")
    ] = 256,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: PATH_SIZE beside PATH).", show_default=False),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes (default: one per core, at most 8).", show_default=False
        ),
    ] = None,
) -> None:
    """Write a resized PNG copy of every image, in the same layout, with a manifest."""
    from ..datatools.prepare import prepare_dataset

    console = Console(soft_wrap=True)  # long paths stay whole, copy-pasteable
    stats = prepare_dataset(path, size=size, out=out, workers=workers)
    console.print(
        f"{stats.out}: {stats.converted:,} written, {stats.skipped:,} already done, "
        f"{len(stats.failed):,} unreadable, of {stats.total:,} images ({stats.seconds:.1f} s).",
        highlight=False,
    )
    for source, reason in stats.failed[:_SHOWN]:
        console.print(f"  skipped {source}: {reason}", markup=False, highlight=False)
    if len(stats.failed) > _SHOWN:
        console.print(f"  ... and {len(stats.failed) - _SHOWN} more")
    console.print(f"Train on it with: pneumo-fastai train --data {stats.out}", highlight=False)


@data_app.command()
def holdout(
    path: Annotated[Path, typer.Argument(help="Dataset folder in the Kaggle layout.")],
    out: Annotated[Path, typer.Option(help="New folder for train/ and the held-out test/.")],
    pct: Annotated[
        float, typer.Option(help="Share of each class held out, whole patients.")
    ] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the patient draw.")] = 0,
    copy: Annotated[bool, typer.Option(help="Copy the files instead of symlinking them.")] = False,
) -> None:
    """Carve a patient-disjoint, class-stratified test/ split out of train (+ val)."""
    from ..datatools.holdout import carve_holdout

    result = carve_holdout(path, out, pct=pct, seed=seed, copy=copy)
    typer.echo(
        f"{result.root}: train {result.train}, test {result.test} "
        f"({result.test_patients} patients, none of them in train)."
    )


@data_app.command()
def audit(
    ensemble: Annotated[
        Path, typer.Argument(help="Card of a --folds ensemble (EXPORTS/NAME.json).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for label_issues.csv and suspects.png.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Dataset folder, if it moved since training (default: the card's data root).",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int, typer.Option(help="Suspects shown on the contact sheet, worst first.")
    ] = 24,
) -> None:
    """Flag likely label errors with cleanlab on a folds ensemble's out-of-fold predictions."""
    try:
        from ..datatools.audit import audit_ensemble
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _AUDIT_NEEDS:
            raise
        raise PneumoError(
            f"`pneumo-fastai data audit` needs {e.name}, from the optional extra [audit]: "
            "pip install -e '.[audit]' (or pip install 'pneumo-fastai[audit]')."
        ) from e
    from rich.table import Table

    console = Console(soft_wrap=True)  # long paths stay whole, copy-pasteable
    result = audit_ensemble(ensemble, out, data=data, top=top)
    oof = result.oof
    table = Table(title=f"Suspect labels in {oof.name} ({oof.k}-fold out-of-fold, cleanlab)")
    for column in ("given label", "images", "suspects", "share"):
        table.add_column(column, justify="left" if column == "given label" else "right")
    for label, (suspects, n) in result.counts().items():
        table.add_row(label, f"{n:,}", f"{suspects:,}", f"{suspects / n:.1%}")
    console.print(table)
    if oof.task == "subtype":
        console.print(
            "Subtype ensemble: audited on NORMAL against PNEUMONIA (BACTERIA and VIRUS both "
            "PNEUMONIA); bacteria/virus mix-ups are not looked for.",
            highlight=False,
        )
    console.print(f"Every image, worst label first: {result.csv}", highlight=False)
    console.print(
        f"Contact sheet of the top {result.shown} suspects: {result.sheet}", highlight=False
    )
    console.print(
        "Once a reader has reviewed them (set suspect to False where the label is right), "
        f"train without the rest: pneumo-fastai train --exclude {result.csv} ...",
        highlight=False,
    )
    if result.missing:
        console.print(
            f"Not found under {oof.root}, {len(result.missing)} of the sheet's images (their "
            "tiles say missing); pass --data if the dataset moved:",
            highlight=False,
        )
        for name in result.missing[:_SHOWN]:
            console.print(f"  {name}", markup=False, highlight=False)
        if len(result.missing) > _SHOWN:
            console.print(f"  ... and {len(result.missing) - _SHOWN} more")
