"""`pneumo-fastai adapt`: adapt an export to a new site's class mix from its unlabelled X-rays.

pneumo-fastai adapt exports/pneumo_resnet34.json site_b/ --name pneumo_site_b
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import ADAPT_MIN_IMAGES
from .options import BsOpt, EngineOpt, ModelArg, PrecisionOpt


def adapt_command(
    model: ModelArg,
    folder: Annotated[
        Path,
        typer.Argument(
            help="The new site's X-rays, unlabelled (searched recursively); at least "
            f"{ADAPT_MIN_IMAGES} readable images the OOD check accepts."
        ),
    ],
    name: Annotated[str, typer.Option(help="Name of the adapted export (NAME.json).")],
    exports: Annotated[
        Path | None,
        typer.Option(help="Folder for NAME.json (default: the adapted export's folder)."),
    ] = None,
    n_boot: Annotated[
        int, typer.Option(min=10, help="Bootstrap resamples of the images for the interval.")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    engine: EngineOpt = "torch",
    precision: PrecisionOpt = "auto",
    bs: BsOpt = 32,
) -> None:
    """Estimate the site's NORMAL and PNEUMONIA shares (EM, with a bootstrap interval) and write
    an adapted export: the same weights, its probabilities re-weighted to those shares by every
    engine, decided at the card's threshold.

    Exit status: 0 written, 2 a usage error (a missing export, a folder with too few X-rays).
    """
    from rich.console import Console
    from rich.table import Table

    from ..inference.adapt import adapt_export

    result = adapt_export(
        model, folder, name, exports, n_boot=n_boot, seed=seed, engine=engine,
        precision=precision, bs=bs, progress=True,
    )  # fmt: skip
    a = result.card.adaptation
    table = Table(title=f"Class shares at {folder}, estimated from {result.n_images} X-rays")
    for column in ("class", "training (source)", "this site", f"{a.level:.0%} interval"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for c in result.card.classes:
        lo, hi = a.interval[c]
        table.add_row(c, f"{a.source[c]:.3f}", f"{a.target[c]:.3f}", f"[{lo:.3f}, {hi:.3f}]")
    console = Console()
    console.print(table)
    if result.n_flagged or result.n_unreadable:
        console.print(
            f"Left out: {result.n_flagged} unlike the training X-rays, {result.n_unreadable} "
            "unreadable."
        )
    t = result.card.decision_threshold.value
    console.print(
        f"Decision: PNEUMONIA where the adapted P(PNEUMONIA) >= {t:.3f}, i.e. the unadapted "
        f"P(PNEUMONIA) >= {a.raw_threshold:.3f}.\nWrote {result.card_path}; predict with: "
        f"pneumo-fastai predict {result.card_path} FILES"
    )
