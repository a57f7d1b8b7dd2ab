"""`pneumo-fastai adapt`: fit an export to a new site, from its unlabelled or labelled X-rays.

pneumo-fastai adapt exports/pneumo_resnet34.json site_b/ --name pneumo_site_b
pneumo-fastai adapt exports/pneumo_resnet34.json --labels site_b_sample/ --name site_b
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import ADAPT_MIN_IMAGES, ADAPT_MIN_NORMAL, ADAPT_MIN_PNEUMONIA
from .options import BsOpt, EngineOpt, ModelArg, PrecisionOpt


def adapt_command(
    model: ModelArg,
    folder: Annotated[
        Path | None,
        typer.Argument(
            help="The new site's X-rays, unlabelled (searched recursively): at least "
            f"{ADAPT_MIN_IMAGES} distinct readable images the OOD check accepts. Leave out with "
            "--labels.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the adapted export (NAME.json).")] = ...,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="A labelled sample of the site instead: a folder with NORMAL/ and PNEUMONIA/, "
            "or a CSV with columns file (relative to the CSV) and label. Fits the site's "
            "temperature and its threshold at the card's target sensitivity; needs at least "
            f"{ADAPT_MIN_NORMAL} NORMAL and {ADAPT_MIN_PNEUMONIA} PNEUMONIA X-rays (more "
            "PNEUMONIA for targets above 0.95).",
            show_default=False,
        ),
    ] = None,
    force_prior: Annotated[
        bool,
        typer.Option(
            help="Apply the class-mix correction even where the test says the site's images "
            "differ from training's (recorded in the card)."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Replace an existing NAME.json that is not an adaptation of MODEL.")
    ] = False,
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
    """Fit an export to a new site and write an adapted export (the same weights) that every
    engine applies.

    Unlabelled (FOLDER): first tests that the site differs from training only in its class mix
    (its P(PNEUMONIA) scores against a mix of validation's per-class scores, and the share of
    images the OOD check flags); if so, estimates the site's NORMAL and PNEUMONIA shares (EM,
    with a bootstrap interval) and re-weights the probabilities to them. Labelled (--labels):
    fits the site's temperature and the threshold at the card's target sensitivity on its labels.

    Exit status: 0 written; 2 a usage error (a missing export, too few X-rays, one class,
    repeated images, a bad label file or --name); 3 the site's images differ from training's
    beyond the class mix, so no correction was written (use --labels, or --force-prior).
    """
    from rich.console import Console

    from ..inference.adapt import adapt_export

    result = adapt_export(
        model, folder, name, exports, labels=labels, force_prior=force_prior, force=force,
        n_boot=n_boot, seed=seed, engine=engine, precision=precision, bs=bs, progress=True,
    )  # fmt: skip
    console = Console()
    left_out = {
        "unlike the training X-rays": result.n_flagged,
        "unreadable": result.n_unreadable,
        "repeating another file": result.n_repeats,
    }
    if any(left_out.values()):
        console.print("Left out: " + ", ".join(f"{n} {why}" for why, n in left_out.items() if n))
    if result.fit is not None:
        _print_labels(console, result)
    else:
        _print_prior(console, result, folder)
    console.print(
        f"Wrote {result.card_path}; predict with: pneumo-fastai predict {result.card_path} FILES"
    )


def _print_prior(console, result, folder: Path | None) -> None:
    from rich.table import Table

    a, test = result.card.adaptation, result.test
    if test.rejected:
        console.print(
            f"[red]Warning:[/red] the site's images differ from training's beyond the class mix "
            f"({test.describe()}); the correction was applied because of --force-prior."
        )
    else:
        console.print(f"Label-shift test passed: {test.describe()}.")
    table = Table(title=f"Class shares at {folder}, estimated from {result.n_images} X-rays")
    for column in ("class", "training (source)", "this site", f"{a.level:.0%} interval"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for c in result.card.classes:
        lo, hi = a.interval[c]
        table.add_row(c, f"{a.source[c]:.3f}", f"{a.target[c]:.3f}", f"[{lo:.3f}, {hi:.3f}]")
    console.print(table)
    t = result.card.decision_threshold.value
    console.print(
        f"Decision: PNEUMONIA where the adapted P(PNEUMONIA) >= {t:.3f}, i.e. the unadapted "
        f"P(PNEUMONIA) >= {a.raw_threshold:.3f}."
    )


def _print_labels(console, result) -> None:
    fit, card = result.fit, result.card
    lab = card.adaptation.labels
    (s_lo, s_hi), (p_lo, p_hi) = fit.sensitivity_interval, fit.specificity_interval
    console.print(
        f"Fitted on {fit.n['NORMAL']} NORMAL and {fit.n['PNEUMONIA']} PNEUMONIA labelled X-rays "
        f"of the site: logit scale {fit.scale:.3f} (the site's temperature), threshold "
        f"{fit.threshold:.3f} (was {lab.base_threshold:.3f}).\n"
        f"On the sample: sensitivity {fit.sensitivity:.3f} [{s_lo:.3f}, {s_hi:.3f}], "
        f"specificity {fit.specificity:.3f} [{p_lo:.3f}, {p_hi:.3f}] (95 % bootstrap "
        f"intervals). Expected sensitivity on the site's other X-rays: "
        f"{fit.expected_sensitivity:.3f} (target {card.decision_threshold.target_sensitivity})."
    )
