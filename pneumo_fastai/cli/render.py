"""What the commands print: tables and summaries in the terminal (rich), nothing computed here.

The library returns plain values (`DatasetReport`, `Evaluation`, `Prediction`s); these functions
only lay them out, sized to fit an 80-column terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from ..config import CLASSES
from ..inference.results import Prediction, utf8_text

if TYPE_CHECKING:  # imported by the functions that use them: `predict` never loads torch
    from ..datatools.check import DatasetReport
    from ..evaluation.evaluate import Evaluation
    from ..evaluation.report import ReportFiles

_SHOWN = 10  # items of a long list printed in the terminal (the JSON has them all)


def print_dataset_report(report: DatasetReport, console: Console | None = None) -> None:
    """Render a report in the terminal: a count table, then summaries, problems and warnings."""
    console = console or Console(soft_wrap=True)
    table = Table(title=f"Dataset {report.root}")
    for column in ("split", *CLASSES, "total", "% PNEUMONIA", "patients"):
        table.add_column(column, justify="left" if column == "split" else "right")
    balance = report.balance()
    for split, counts in report.counts.items():
        frac = balance[split]["pneumonia_fraction"]
        table.add_row(
            split,
            *(f"{counts.get(c, 0):,}" for c in CLASSES),
            f"{sum(counts.values()):,}",
            "-" if frac is None else f"{frac:.1%}",
            f"{report.patients.get(split, 0):,}",
        )
    console.print(table)
    if report.subtypes:
        per_split = "; ".join(
            f"{split} " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
            for split, counts in report.subtypes.items()
        )
        mixed = report.mixed_patients
        console.print(
            f"Subtypes (from file names, for --task subtype; unknown: left out there): "
            f"{per_split}. {mixed['with_both']:,} of {mixed['pneumonia_patients']:,} PNEUMONIA "
            "patients have both bacteria and virus files: --task subtype keeps each patient on "
            "one side of the split, stratifies it by its majority subtype and keeps each "
            "image's own label.",
            highlight=False,
        )
    if report.sizes:
        common = ", ".join(
            f"{s['width']}x{s['height']} ({s['images']:,})" for s in report.sizes["most_common"]
        )
        console.print(
            f"Sizes: {report.sizes['distinct']:,} distinct; most common {common}; width "
            f"{_fmt_spread(report.sizes['width'])}, height {_fmt_spread(report.sizes['height'])}."
        )
        console.print(
            f"Modes: {_fmt_counts(report.modes)}. Formats: {_fmt_counts(report.formats)}."
        )
    if report.issues:
        console.print(f"Unusable files: {len(report.issues)}")
        for issue in report.issues[:_SHOWN]:
            console.print(f"  {issue.kind:<10} {issue.path}  ({issue.detail})", markup=False)
        _more(console, len(report.issues))
    if report.quick:
        console.print("Duplicates: not searched (quick mode).")
    else:
        s = report.duplicate_summary()
        console.print(
            f"Exact pixel duplicates: {s['groups']} group(s), {s['files']} files "
            f"({s['within_split_groups']} within a split, {s['cross_split_groups']} across "
            f"splits, {s['test_leak_groups']} reaching test)."
        )
        for group in report.duplicates[:_SHOWN]:
            console.print("  " + "  =  ".join(group.files), markup=False)
        _more(console, len(report.duplicates))
    if "test" in report.counts:
        shown = ", ".join(report.shared_patients[:_SHOWN])
        console.print(
            f"Patients in both train/val and test: {len(report.shared_patients)}"
            + (
                f" ({shown}{', ...' if len(report.shared_patients) > _SHOWN else ''})"
                if shown
                else ""
            )
        )
    if report.split_preview:
        p = report.split_preview
        for mode in ("patient", "image"):
            m = p[mode]
            dup = (
                "-"
                if m["duplicate_groups_straddling"] is None
                else m["duplicate_groups_straddling"]
            )
            console.print(
                f"{mode.capitalize()} split (seed {p['seed']}, {p['valid_pct']:.0%} valid): "
                f"{m['train']:,} train / {m['valid']:,} valid; duplicate groups straddling: {dup}; "
                f"patients straddling: {m['patients_straddling']}."
            )
    for problem in report.problems:
        console.print(f"[bold red]PROBLEM[/] {problem}", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning[/] {warning}", highlight=False)
    verdict = "[green]OK for training[/]" if report.ok else "[bold red]NOT fit for training[/]"
    console.print(verdict)


def _fmt_spread(spread: dict[str, float]) -> str:
    return f"{spread['min']:g}-{spread['max']:g} (median {spread['median']:g})"


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def _more(console: Console, n: int) -> None:
    if n > _SHOWN:
        console.print(f"  ... and {n - _SHOWN} more (all of them in the --json report)")


def headline_tables(ev: Evaluation) -> list[Table]:
    """One table per inference mode: headline figures at argmax and the decision threshold."""
    from ..evaluation.evaluate import MODE_NAMES
    from ..evaluation.report import SHORT_NAMES, headline_rows

    tables = []
    for mode in ev.summaries:
        header, rows = headline_rows(ev, ("argmax", ev.run.decision.name), SHORT_NAMES, [mode])
        title = f"{ev.run.name} on {ev.run.test_set.folder} ({MODE_NAMES[mode]})"
        table = Table(title=title, title_justify="left")
        table.add_column(header[0])
        for h in header[1:]:
            table.add_column(h.replace(" @ ", " @\n"), justify="right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def subtype_line(summary: dict) -> str:
    """The three-class headline figures with their intervals, in one sentence."""
    from ..evaluation.report import with_interval

    m = summary["metrics"]
    names = (
        ("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
        ("macro AUC", "macro_auc"), ("bacteria vs virus accuracy", "bacteria_vs_virus_accuracy"),
        ("BACTERIA recall", "recall_bacteria"), ("VIRUS recall", "recall_virus"),
    )  # fmt: skip
    return "Three classes: " + "; ".join(f"{n} {with_interval(m[k])}" for n, k in names) + "."


def ood_line(ood: dict) -> str:
    """One sentence: how many test images were flagged, and the decision's figures without."""
    line = f"OOD check: {ood['flagged']} of {ood['n_images']} test images flagged."
    kept = ood["without_flagged"]
    if kept is not None:
        m = kept["metrics"]
        figures = ", ".join(
            f"{name} {m[key]['value']:.3f}"
            for name, key in (("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                              ("specificity", "specificity"), ("ROC AUC", "roc_auc"))
            if m[key]["value"] is not None
        )  # fmt: skip
        line += f" Without them ({kept['n_samples']} images): {figures}."
    return line


def print_evaluation(
    ev: Evaluation, files: ReportFiles | None = None, console: Console | None = None
) -> None:
    """Print the headline tables, what was left out, and where the files are."""
    from ..evaluation.report import bootstrap_unit

    console = console or Console()
    ts = ev.run.test_set
    counts = ", ".join(f"{k} {v}" for k, v in ts.counts().items())
    console.print(
        f"Evaluated {len(ts.files)} images ({counts}); {len(ts.skipped)} file(s) left out. "
        f"95% bootstrap CIs by {bootstrap_unit(ev)}, {ev.n_boot} resamples, seed {ev.seed}."
    )
    for table in headline_tables(ev):
        console.print(table)
    if len(ev.run.points) > 2:
        console.print("Figures at every threshold are in metrics.json and the report.")
    if ev.subtype is not None:
        console.print(subtype_line(ev.subtype), markup=False)
    if ev.ood is not None:
        console.print(ood_line(ev.ood), markup=False)
    for s in ts.skipped[:_SHOWN]:
        console.print(f"  left out {ts.relative(s.path)}: {s.reason}", markup=False)
    if len(ts.skipped) > _SHOWN:
        console.print(f"  ... and {len(ts.skipped) - _SHOWN} more (see metrics.json)")
    if files is not None:
        console.print(f"Wrote {files.metrics}, {files.predictions}, {files.markdown}, {files.html}")


def print_predictions(
    preds: Sequence[Prediction], threshold: float, console: Console | None = None
) -> None:
    """The predictions as a table, with a one-line count."""
    console = console or Console()
    negative, positive = CLASSES
    table = Table(
        Column("File", overflow="fold"),
        Column(f"P({positive})", justify="right"),
        "Prediction",
        "Argmax",
        Column("OOD / error", overflow="fold"),
        caption=f"Prediction: {positive} where P({positive}) >= {threshold:.4g}, the model card's "
        "decision threshold. Argmax: the most probable class. OOD: unlike the training X-rays, "
        "not to be read as a diagnosis.",
    )
    for p in preds:
        prob = "" if p.probability is None else f"{p.probability:.4f}"
        note = p.error or (f"OOD: {p.ood_reason}" if p.ood else "")
        style = "red" if not p.ok else "yellow" if p.ood else None
        file = Text(utf8_text(p.file or ""))  # Text: no markup; \xNN: printable as UTF-8
        table.add_row(file, prob, p.label, p.label_argmax, Text(note), style=style)
    console.print(table)
    failed = sum(not p.ok for p in preds)
    n_positive = sum(p.label == positive for p in preds)
    n_negative = sum(p.label == negative for p in preds)
    flagged = sum(bool(p.ood) for p in preds)
    console.print(
        f"{len(preds)} files: {n_positive} {positive}, {n_negative} {negative}, {failed} could "
        f"not be read; {flagged} flagged as unlike the training X-rays."
    )
