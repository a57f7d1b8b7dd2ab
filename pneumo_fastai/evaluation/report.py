"""Write an evaluation's files: metrics, predictions, and the report as Markdown and HTML.

    from pneumo_fastai.evaluation.report import write_report
    files = write_report(evaluation, plots, Path("reports/pneumo_resnet34"))

Files: `metrics.json` (every figure with its interval, the model and test-set identities, the
files left out and why), `predictions.csv` (one row per evaluated image), `report.md` (plots
linked from plots/) and `report.html` (self-contained: plots inlined as base64 PNG data URIs).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..card import library_versions, timestamp
from ..config import CLASSES
from ..figures.metrics import HEADLINE_METRICS
from ..fileio import staged_files
from ..inference.results import write_predictions
from .evaluate import (
    ARGMAX_THRESHOLD,
    MODE_NAMES,
    Evaluation,
    format_threshold,
    model_facts,
)
from .plots import CAPTIONS

LEVEL = 0.95  # coverage of `metrics.summarize`'s intervals (its default)
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity (PNEUMONIA recall)",
    "specificity": "Specificity (NORMAL recall)",
    "ppv": "PPV (PNEUMONIA precision)",
    "npv": "NPV (NORMAL precision)",
    "f1_pneumonia": "F1 (PNEUMONIA)",
    "roc_auc": "ROC AUC",
    "average_precision": "Average precision",
    "brier": "Brier score (lower is better)",
    "ece": "ECE, 15 bins (lower is better)",
}
SHORT_NAMES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1_pneumonia": "F1 PNEUMONIA",
    "roc_auc": "ROC AUC",
    "average_precision": "Average precision",
    "brier": "Brier",
    "ece": "ECE",
}
TTA_NOTE = (
    "TTA is fastai's `Learner.tta`: the mean of 4 passes with training's augmentation, blended "
    "75/25 with the plain pass (beta 0.25)."
)


@dataclass(frozen=True)
class ReportFiles:
    """The files `write_report` wrote."""

    metrics: Path  # metrics.json
    predictions: Path  # predictions.csv
    markdown: Path  # report.md
    html: Path  # report.html


@dataclass(frozen=True)
class _Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class _Code:
    text: str


@dataclass(frozen=True)
class _Image:
    path: Path
    caption: str


_Block = str | _Table | _Code | _Image  # a str is a paragraph of plain text


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def with_interval(figure: dict[str, float | None]) -> str:
    """`value [low, high]` of one `summarize` metric entry, n/a where undefined."""
    if figure["value"] is None:
        return "n/a"
    return f"{_fmt(figure['value'])} [{_fmt(figure['ci_low'])}, {_fmt(figure['ci_high'])}]"


def _columns(
    ev: Evaluation, points: Sequence[str] | None = None, modes: Sequence[str] | None = None
) -> list[tuple[str, str, str]]:
    """(mode, point name, header) for every figure column (or only `points`, `modes`)."""
    return [
        (mode, pt.name, f"{MODE_NAMES[mode]} @ {pt.label}")
        for mode in ev.summaries
        for pt in ev.run.points
        if (points is None or pt.name in points) and (modes is None or mode in modes)
    ]


def bootstrap_unit(ev: Evaluation) -> str:
    return "patient" if ev.run.test_set.grouped_by_patient() else "image"


def metrics_dict(ev: Evaluation) -> dict[str, Any]:
    """Everything `metrics.json` holds, JSON-ready."""
    ts, run = ev.run.test_set, ev.run
    results = {}
    for mode, by_point in ev.summaries.items():
        results[mode] = {}
        for point, summary in by_point.items():
            c = summary["counts"]
            matrix = {
                "rows": [f"true {n}" for n in CLASSES],
                "columns": [f"predicted {n}" for n in CLASSES],
                "values": [[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
            }
            results[mode][point] = {**summary, "confusion_matrix": matrix}
    return {
        "created": timestamp(),
        "model": model_facts(run.exported),
        "test_set": {
            "folder": str(ts.folder),
            "root": str(ts.root),
            "fingerprint": ts.fingerprint(),
            "fingerprint_of": "sorted root-relative paths of the evaluated images",
            "n_images": len(ts.files),
            "counts": ts.counts(),
            "n_patients": len(set(ts.patients())),
            "n_skipped": len(ts.skipped),
        },
        "skipped": [{"file": ts.relative(s.path), "reason": s.reason} for s in ts.skipped],
        "thresholds": [
            {"name": pt.name, "threshold": pt.threshold, "source": pt.source} for pt in run.points
        ],
        "decision_threshold": run.decision.name,
        "threshold_policy": (
            "The test set chose nothing: thresholds come from the argmax rule, the model card, "
            "or the validation predictions stored beside the card."
        ),
        "bootstrap": {
            "n_resamples": ev.n_boot,
            "seed": ev.seed,
            "level": LEVEL,
            "unit": bootstrap_unit(ev),
            "interval": "percentile",
        },
        "inference": {
            "modes": list(ev.summaries),
            "tta": TTA_NOTE if "tta" in ev.summaries else None,
        },
        "results": results,
        "classification_report": ev.reports,
        "subtype": ev.subtype,
        "ood": ev.ood,
        "versions": library_versions(),
    }


def prediction_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """One row per evaluated image: label, probability, both predictions, patient."""
    run = ev.run
    ts, y = run.test_set, run.y
    plain, tta = run.probabilities["plain"], run.probabilities.get("tta")
    rows = []
    for i, (file, patient) in enumerate(zip(ts.files, ts.patients(), strict=True)):
        row = {
            "file": ts.relative(file),
            "label": CLASSES[y[i]],
            "probability": f"{plain[i]:.6f}",
            "prediction_at_threshold": CLASSES[int(plain[i] >= run.decision.threshold)],
            "prediction_at_argmax": CLASSES[int(plain[i] >= ARGMAX_THRESHOLD)],
            "patient": patient,
            "ood": None if run.ood is None else bool(run.ood[i]),
        }
        rows.append(row | ({"probability_tta": f"{tta[i]:.6f}"} if tta is not None else {}))
    return rows


def headline_rows(
    ev: Evaluation,
    points: Sequence[str] | None = None,  # operating point names; None: all
    names: dict[str, str] = METRIC_NAMES,  # row labels
    modes: Sequence[str] | None = None,  # inference modes (plain, tta); None: all
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the headline table: one row per metric, one column per mode x point."""
    columns = _columns(ev, points, modes)
    rows = [
        [names[m]]
        + [with_interval(ev.summaries[mode][pt]["metrics"][m]) for mode, pt, _ in columns]
        for m in HEADLINE_METRICS
    ]
    return ["Figure (95% CI)"] + [h for *_, h in columns], rows


def _sections(ev: Evaluation, plots: dict[str, Path]) -> list[tuple[str, list[_Block]]]:
    run, ts = ev.run, ev.run.test_set
    facts = model_facts(run.exported)
    counts = ts.counts()
    unit = bootstrap_unit(ev)
    n_units = len(set(ts.patients())) if unit == "patient" else len(ts.files)
    header, rows = headline_rows(ev)
    sections: list[tuple[str, list[_Block]]] = [
        (
            "Model and test set",
            [
                _Table(
                    ["Item", "Value"],
                    [
                        ["Model card", facts["card"]],
                        ["Card sha256", facts["card_sha256"]],
                        ["Validation fingerprint", str(facts["valid_fingerprint"])],
                        ["Loaded from", f"{facts['loaded_from']} on {facts['device']}"],
                        ["Test folder", str(ts.folder)],
                        ["Test fingerprint", ts.fingerprint()],
                        [
                            "Images evaluated",
                            f"{len(ts.files)} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
                        ],
                        ["Patients", str(len(set(ts.patients())))],
                        ["Files left out", str(len(ts.skipped))],
                    ],
                )
            ],
        ),
        (
            "Thresholds",
            [
                "The test set chose nothing: every threshold below comes from the argmax rule, "
                "the model card, or the validation predictions stored beside the card. "
                f"predictions.csv uses the decision threshold, {run.decision.label}.",
                _Table(
                    ["Name", "Threshold", "Where it came from"],
                    [[pt.name, format_threshold(pt.threshold), pt.source] for pt in run.points],
                ),
            ],
        ),
        (
            "Headline figures",
            [
                f"95% percentile bootstrap intervals from {ev.n_boot} resamples (seed {ev.seed}), "
                f"resampling whole {unit}s ({n_units} of them)."
                + (f" {TTA_NOTE}" if "tta" in ev.summaries else ""),
                _Table(header, rows),
            ],
        ),
        ("Per class", [_per_class_table(ev)]),
        *(
            [("Three classes (NORMAL, BACTERIA, VIRUS)", _subtype_blocks(ev.subtype))]
            if ev.subtype
            else []
        ),
        *([("Unlike the training X-rays (OOD)", _ood_blocks(ev))] if ev.ood else []),
        ("Confusion matrices", [_confusion_table(ev)]),
        (
            "scikit-learn classification reports",
            [
                _Code(f"{MODE_NAMES[mode]} @ {pt.label}\n{ev.reports[mode][pt.name]}")
                for mode in ev.reports
                for pt in run.points
            ],
        ),
        ("Plots", [_Image(path, CAPTIONS[name]) for name, path in plots.items()]),
    ]
    if ts.skipped:
        skipped = _Table(["File", "Reason"], [[ts.relative(s.path), s.reason] for s in ts.skipped])
        sections.append(
            (
                "Files left out",
                [
                    f"{len(ts.skipped)} file(s) in the class folders were not evaluated; "
                    "they count in no figure.",
                    skipped,
                ],
            )
        )
    return sections


SUBTYPE_NAMES = {
    "accuracy": "Accuracy (3 classes)",
    "balanced_accuracy": "Balanced accuracy (3 classes)",
    "macro_auc": "Macro one-vs-rest ROC AUC",
    "bacteria_vs_virus_accuracy": "Bacteria vs virus accuracy, among PNEUMONIA images",
}


OOD_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")


def _ood_blocks(ev: Evaluation) -> list[_Block]:
    """How many images the OOD check flagged, and the decision's figures without them."""
    ood = ev.ood or {}
    by_class = ", ".join(f"{k} {v}" for k, v in ood["flagged_by_class"].items())
    text = (
        f"{ood['flagged']} of {ood['n_images']} test images were flagged as unlike the training "
        f"X-rays ({by_class}); they keep their probability and count in every figure above."
    )
    kept = ood["without_flagged"]
    if kept is None:
        return [text]
    every = ev.summaries["plain"][ood["threshold"]]["metrics"]
    rows = [
        [METRIC_NAMES[m], with_interval(every[m]), with_interval(kept["metrics"][m])]
        for m in OOD_METRICS
    ]
    header = ["Figure (plain, decision threshold)", "every image", "without the flagged"]
    return [text, _Table(header, rows)]


def _subtype_blocks(summary: dict[str, Any]) -> list[_Block]:
    """The three-class figures with intervals, per-class figures, and the 3 x 3 confusion."""
    m, classes = summary["metrics"], summary["classes"]
    headline = [[SUBTYPE_NAMES[k], with_interval(m[k])] for k in SUBTYPE_NAMES]
    per_class = [
        [c, *(with_interval(m[f"{kind}_{c.lower()}"]) for kind in ("precision", "recall", "f1"))]
        for c in classes
    ]
    cm = summary["confusion_matrix"]
    counts = [
        [row, *map(str, values)] for row, values in zip(cm["rows"], cm["counts"], strict=True)
    ]
    normalised = [
        [row, *("n/a" if v is None else f"{v:.3f}" for v in values)]
        for row, values in zip(cm["rows"], cm["normalized"], strict=True)
    ]
    return [
        f"Argmax over the three classes, on {summary['n_samples']} images; 95% intervals from "
        f"{summary['n_resamples']} patient-bootstrap resamples. The binary figures above are "
        "those of the collapsed P(PNEUMONIA) = P(BACTERIA) + P(VIRUS).",
        _Table(["Figure (95% CI)", "Value"], headline),
        _Table(["Class", "Precision", "Recall", "F1"], per_class),
        _Table(["Counts", *cm["columns"]], counts),
        _Table(["Row-normalised", *cm["columns"]], normalised),
    ]


def _per_class_table(ev: Evaluation) -> _Table:
    rows = []
    for mode, point, header in _columns(ev):
        summary = ev.summaries[mode][point]
        m, c = summary["metrics"], summary["counts"]
        for cls, key in zip(CLASSES, ("normal", "pneumonia"), strict=True):
            rows.append(
                [
                    header,
                    cls,
                    with_interval(m[f"precision_{key}"]),
                    with_interval(m[f"recall_{key}"]),
                    with_interval(m[f"f1_{key}"]),
                    str(c[f"support_{key}"]),
                ]
            )
    return _Table(["Column", "Class", "Precision", "Recall", "F1", "Support"], rows)


def _confusion_table(ev: Evaluation) -> _Table:
    rows = []
    for mode, point, header in _columns(ev):
        c = ev.summaries[mode][point]["counts"]
        rows.append([header, *(str(c[k]) for k in ("tn", "fp", "fn", "tp"))])
    return _Table(
        [
            "Column",
            "TN (NORMAL as NORMAL)",
            "FP (NORMAL as PNEUMONIA)",
            "FN (PNEUMONIA as NORMAL)",
            "TP (PNEUMONIA as PNEUMONIA)",
        ],
        rows,
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: Sequence[tuple[str, list[_Block]]], base: Path) -> str:
    """Markdown with images linked relative to `base` (the report folder)."""
    out = [f"# {title}", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, _Table):
                out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            elif isinstance(block, _Code):
                out += ["```", block.text.rstrip(), "```"]
            elif isinstance(block, _Image):
                link = Path(os.path.relpath(block.path, base)).as_posix()
                out += [f"### {block.caption}", "", f"![{block.caption}]({link})"]
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-weight: 600; margin-bottom: 0.4em; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(title: str, sections: Sequence[tuple[str, list[_Block]]]) -> str:
    """A self-contained HTML page: inline CSS, every image a data URI, no external references."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for heading, blocks in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        for block in blocks:
            if isinstance(block, _Table):
                out.append("<table><thead><tr>")
                out += [f"<th>{e(h)}</th>" for h in block.header]
                out.append("</tr></thead><tbody>")
                for row in block.rows:
                    out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
                out.append("</tbody></table>")
            elif isinstance(block, _Code):
                out.append(f"<pre>{e(block.text.rstrip())}</pre>")
            elif isinstance(block, _Image):
                out.append(
                    f"<figure><figcaption>{e(block.caption)}</figcaption>"
                    f'<img src="{_data_uri(block.path)}" alt="{e(block.caption)}"></figure>'
                )
            else:
                out.append(f"<p>{e(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(ev: Evaluation, plots: dict[str, Path], out_dir: Path) -> ReportFiles:
    """Write metrics.json, predictions.csv, report.md and report.html into `out_dir` atomically."""
    out_dir = Path(out_dir)
    files = ReportFiles(
        metrics=out_dir / "metrics.json",
        predictions=out_dir / "predictions.csv",
        markdown=out_dir / "report.md",
        html=out_dir / "report.html",
    )
    title = f"Evaluation of {ev.run.name} on {ev.run.test_set.folder.name}/"
    sections = _sections(ev, plots)
    finals = [files.metrics, files.predictions, files.markdown, files.html]
    with staged_files(out_dir, finals) as (metrics, predictions, markdown, page):
        text = json.dumps(metrics_dict(ev), indent=2, allow_nan=False)
        metrics.write_text(text + "\n")
        write_predictions(prediction_rows(ev), predictions, fmt="csv")
        markdown.write_text(render_markdown(title, sections, out_dir))
        page.write_text(render_html(title, sections))
    return files
