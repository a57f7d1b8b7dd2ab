"""Report files of the tiny export's session evaluation (`done`, conftest.py): metrics.json,
predictions.csv, report.md, a self-contained report.html, and the terminal table."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from pneumo_fastai.cli.render import print_evaluation
from pneumo_fastai.config import CLASSES
from pneumo_fastai.data.layout import fingerprint
from pneumo_fastai.data.names import patient_id
from pneumo_fastai.evaluation.evaluate import SkippedFile
from pneumo_fastai.evaluation.report import write_report
from pneumo_fastai.fileio import sha256_file

from ..helpers.data import BAD_FILES, good_test_files
from ..helpers.evaluation import N_BOOT


def _no_nan(value: str) -> float:
    raise AssertionError(f"{value} in metrics.json")


def test_metrics_json_identifies_model_and_test_set_and_holds_every_figure(done):
    m = json.loads(done.files.metrics.read_text(), parse_constant=_no_nan)
    card = json.loads(done.card.read_text())
    ts = done.ev.run.test_set
    assert m["model"]["name"] == "tiny"
    assert m["model"]["card_sha256"] == sha256_file(done.card)
    assert m["model"]["valid_fingerprint"] == card["data"]["valid_fingerprint"]
    assert m["test_set"]["fingerprint"] == fingerprint(good_test_files(done.data), ts.root)
    assert m["test_set"]["n_images"] == 16 and m["test_set"]["n_skipped"] == 3
    assert m["test_set"]["counts"] == {"NORMAL": 8, "PNEUMONIA": 8}
    assert {s["file"] for s in m["skipped"]} == {f"test/{name}" for name in BAD_FILES}
    assert all(s["reason"] for s in m["skipped"])
    assert m["bootstrap"] == {
        "n_resamples": N_BOOT,
        "seed": 0,
        "level": 0.95,
        "unit": "patient",
        "interval": "percentile",
    }
    thresholds = {t["name"]: t for t in m["thresholds"]}
    assert thresholds["card"]["threshold"] == card["decision_threshold"]["value"]
    assert "validation" in thresholds["target"]["source"] and m["decision_threshold"] == "target"
    assert "test set chose nothing" in m["threshold_policy"]
    assert set(m["results"]) == {"plain", "tta"} and m["inference"]["tta"].startswith("TTA")
    for mode, by_point in m["results"].items():
        assert set(by_point) == set(thresholds)
        for point, result in by_point.items():
            assert sum(map(sum, result["confusion_matrix"]["values"])) == 16
            for name, fig in result["metrics"].items():
                if fig["value"] is not None:
                    assert fig["ci_low"] - 1e-9 <= fig["value"] <= fig["ci_high"] + 1e-9, (
                        mode,
                        point,
                        name,
                    )
            assert "macro avg" in m["classification_report"][mode][point]


def test_predictions_csv_has_one_row_per_evaluated_image(done):
    run = done.ev.run
    with open(done.files.predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "file",
        "label",
        "probability",
        "prediction_at_threshold",
        "prediction_at_argmax",
        "patient",
        "ood",
        "probability_tta",
    ]
    assert {r["ood"] for r in rows} <= {"true", "false"}
    assert [r["file"] for r in rows] == [run.test_set.relative(f) for f in run.test_set.files]
    for row, y, p in zip(rows, run.y, run.probabilities["plain"], strict=True):
        assert row["label"] == CLASSES[y] == Path(row["file"]).parent.name
        assert float(row["probability"]) == pytest.approx(p, abs=1e-6)
        assert row["prediction_at_threshold"] == CLASSES[int(p >= run.decision.threshold)]
        assert row["prediction_at_argmax"] == CLASSES[int(p >= 0.5)]
        assert row["patient"] == patient_id(row["file"])
    decided = [r["prediction_at_threshold"] for r in rows]
    summary = done.ev.summaries["plain"][run.decision.name]["counts"]
    assert decided.count("PNEUMONIA") == summary["tp"] + summary["fp"]


class _Refs(HTMLParser):
    """Every <img> src and every attribute that could load or link something else."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.others: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.images.append(value)
            elif name in ("src", "href", "srcset", "data", "poster", "action"):
                self.others.append((tag, name, value))
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.others.append((tag, "", None))


def test_html_is_self_contained_with_every_plot_inline(done):
    page = done.files.html.read_text()
    refs = _Refs()
    refs.feed(page)
    assert refs.others == []
    assert "url(" not in page and "@import" not in page
    assert len(refs.images) == len(done.plots) >= 9
    for src in refs.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    inline = {base64.b64decode(src.split(",", 1)[1]) for src in refs.images}
    assert inline == {p.read_bytes() for p in done.plots.values()}
    for words in ("Balanced accuracy", "TTA @", "re-chosen on the validation predictions"):
        assert words in page


def test_markdown_links_plots_and_includes_sklearn_report(done):
    text = done.files.markdown.read_text()
    for name, path in done.plots.items():
        link = f"(plots/{path.name})"
        assert link in text, name
        assert (done.files.markdown.parent / "plots" / path.name).is_file()
    assert "macro avg" in text and "weighted avg" in text
    assert "The test set chose nothing" in text
    assert "re-chosen on the validation predictions" in text
    assert "| test/PNEUMONIA/notes.txt | not a" in text  # files left out, with their reason


def test_markup_in_file_names_and_reasons_is_escaped(done, tmp_path):
    ts = done.ev.run.test_set
    odd = SkippedFile(ts.folder / "NORMAL" / "a|b.jpeg", "<script>alert(1)</script> | broken")
    run = dataclasses.replace(done.ev.run, test_set=dataclasses.replace(ts, skipped=(odd,)))
    files = write_report(dataclasses.replace(done.ev, run=run), done.plots, tmp_path)
    page = files.html.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "| test/NORMAL/a\\|b.jpeg | &lt;" not in files.markdown.read_text()
    assert "test/NORMAL/a\\|b.jpeg" in files.markdown.read_text()
    assert json.loads(files.metrics.read_text())["skipped"][0]["reason"] == odd.reason


def test_terminal_table_shows_headline_figures_with_intervals(done):
    console = Console(record=True, width=240)
    print_evaluation(done.ev, done.files, console)
    text = console.export_text()
    assert "Evaluated 16 images (NORMAL 8, PNEUMONIA 8); 3 file(s) left out" in text
    for words in ("Sensitivity", "Specificity", "ROC AUC", "ECE", "argmax (t = 0.500)"):
        assert words in text
    assert text.count("plain @") == text.count("TTA @") == 2  # argmax and the decision
    assert "target (t = " in text and "card (t = " not in text  # the card's is in the report
    sens = done.ev.summaries["plain"]["target"]["metrics"]["sensitivity"]
    assert f"{sens['value']:.3f} [{sens['ci_low']:.3f}, {sens['ci_high']:.3f}]" in text
    assert "notes.txt" in text and str(done.files.html) in text.replace("\n", "")


CELL = re.compile(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]|n/a")


def test_terminal_tables_fit_80_columns_without_wrapping_an_interval(done):
    console = Console(record=True, width=80)
    print_evaluation(done.ev, done.files, console)
    lines = console.export_text().splitlines()
    rows = [line for line in lines if line.startswith("│ ") and "(t =" not in line]
    assert len(rows) == 2 * 11  # plain and TTA tables, 11 headline figures each, one line each
    for line in rows:
        assert len(line) <= 80
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert len(cells) == 3 and all(CELL.fullmatch(c) for c in cells[1:]), line
