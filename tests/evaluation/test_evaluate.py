"""`evaluate`: figures and intervals on a tiny trained export, thresholds from validation only,
bad test folders, and the `pneumo-fastai evaluate` command.

The tiny export (ResNet34 from scratch, 1 epoch, 64 px, synthetic images) and one full
evaluation of it are built once per session: the `done` fixture (tests/evaluation/conftest.py),
which test_report.py and test_plots.py use too.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pneumo_fastai.cli import app
from pneumo_fastai.config import CLASSES
from pneumo_fastai.data.layout import fingerprint
from pneumo_fastai.data.names import patient_id
from pneumo_fastai.errors import DataError, ModelFileError, PneumoError
from pneumo_fastai.evaluation.evaluate import (
    compute_figures,
    evaluate,
    find_test_folder,
    load_test_set,
    operating_points,
)
from pneumo_fastai.evaluation.report import write_report
from pneumo_fastai.figures.metrics import choose_threshold
from pneumo_fastai.fileio import sha256_file
from pneumo_fastai.inference.loading import load_export

from ..helpers.data import (
    BAD_FILES,
    TEST_PATIENTS,
    good_test_files,
    make_split,
    require_shared_data,
)
from ..helpers.evaluation import N_BOOT

pytestmark = pytest.mark.usefixtures("single_thread")  # `done` makes these slow (conftest.py)


def test_every_figure_at_both_rules_with_intervals_around_it(done):
    ev = done.ev
    assert set(ev.summaries) == {"plain", "tta"}
    points = {pt.name: pt.threshold for pt in ev.run.points}
    card = json.loads(done.card.read_text())
    assert points["argmax"] == 0.5
    assert points["card"] == card["decision_threshold"]["value"]
    assert ev.run.decision.name == "target"
    n = 4 * TEST_PATIENTS
    for mode, by_point in ev.summaries.items():
        assert set(by_point) == {"argmax", "card", "target"}
        for name, s in by_point.items():
            assert s["threshold"] == points[name]
            assert s["n_samples"] == n and s["n_groups"] == 2 * TEST_PATIENTS
            assert s["n_resamples"] == N_BOOT
            c = s["counts"]
            assert c["tn"] + c["fp"] + c["fn"] + c["tp"] == n
            assert (c["support_normal"], c["support_pneumonia"]) == (n // 2, n // 2)
            for metric, fig in s["metrics"].items():
                if fig["value"] is None:
                    continue
                low, high = fig["ci_low"], fig["ci_high"]
                assert low - 1e-9 <= fig["value"] <= high + 1e-9, (mode, name, metric, fig)
            # the figures are the test set's, at this threshold
            p = ev.run.probabilities[mode]
            predicted = p >= points[name]
            assert c["tp"] == int((predicted & (ev.run.y == 1)).sum())
    assert not np.allclose(ev.run.probabilities["plain"], ev.run.probabilities["tta"])
    assert "PNEUMONIA" in ev.reports["plain"]["card"] and "support" in ev.reports["tta"]["argmax"]


def test_bootstrap_is_seeded_and_resamples_patients(done):
    run = done.ev.run
    patients = run.test_set.patients()
    assert len(set(patients)) == 2 * TEST_PATIENTS < len(patients)
    assert run.test_set.grouped_by_patient()

    def intervals(groups, seed):
        summaries, _ = compute_figures(run.y, run.probabilities, run.points, groups, N_BOOT, seed)
        metrics = summaries["plain"]["card"]["metrics"]
        return {name: (m["ci_low"], m["ci_high"]) for name, m in metrics.items()}

    by_patient = intervals(patients, 0)
    assert by_patient == {
        name: (m["ci_low"], m["ci_high"])
        for name, m in done.ev.summaries["plain"]["card"]["metrics"].items()
    }
    assert intervals(patients, 0) == by_patient
    assert intervals(patients, 1) != by_patient
    assert intervals(None, 0) != by_patient  # resampling images is another bootstrap


def test_pickle_and_weights_give_the_same_figures(done):
    pickled = evaluate(done.card, done.data, trust_pickle=True, n_boot=N_BOOT, num_workers=0)
    assert pickled.run.exported.from_pickle
    assert pickled.run.probabilities["plain"] == pytest.approx(
        done.ev.run.probabilities["plain"], abs=1e-5
    )
    assert pickled.summaries["plain"]["argmax"] == done.ev.summaries["plain"]["argmax"]


def test_corrupt_and_foreign_files_are_left_out_with_reasons(done):
    ts = done.ev.run.test_set
    skipped = {ts.relative(s.path).removeprefix("test/"): s.reason for s in ts.skipped}
    assert set(skipped) == set(BAD_FILES)
    for name, words in BAD_FILES.items():
        assert skipped[name].startswith(words), (name, skipped[name])
    assert list(ts.files) == good_test_files(done.data)
    assert len(done.ev.run.probabilities["plain"]) == len(ts.files) == 4 * TEST_PATIENTS


def test_target_sensitivity_is_chosen_on_validation_predictions(done, tmp_path):
    # a copy of the export whose validation predictions are known, and the card updated to match
    for f in done.card.parent.glob("tiny.*"):
        if f.suffix in (".pkl", ".pth"):
            (tmp_path / f.name).symlink_to(f)
        elif f.suffix != ".json":
            shutil.copy(f, tmp_path / f.name)
    valid = tmp_path / "tiny.valid.csv"
    rows = [("a", "NORMAL", 0.1), ("b", "NORMAL", 0.6), ("c", "PNEUMONIA", 0.3)]
    rows += [("d", "PNEUMONIA", 0.7), ("e", "PNEUMONIA", 0.8), ("f", "PNEUMONIA", 0.9)]
    with open(valid, "w", newline="") as f:
        csv.writer(f).writerows([("file", "label", "probability"), *rows])
    card = json.loads(done.card.read_text())
    card["files"]["valid"]["sha256"] = sha256_file(valid)
    (tmp_path / "tiny.json").write_text(json.dumps(card))

    exported = load_export(tmp_path / "tiny.json")
    assert operating_points(exported, 0.75)[-1].threshold == 0.7  # 3 of 4 PNEUMONIA >= 0.7
    assert operating_points(exported, 1.0)[-1].threshold == 0.3
    assert "validation" in operating_points(exported, 1.0)[-1].source

    ev = evaluate(tmp_path / "tiny.json", done.data, target_sensitivity=1.0, n_boot=10)
    assert ev.run.decision.threshold == 0.3
    assert ev.summaries["plain"]["target"]["threshold"] == 0.3
    # what the test set would have chosen differs: it was not asked
    y, p = ev.run.y, ev.run.probabilities["plain"]
    assert choose_threshold(y, p, 1.0) != 0.3

    valid.write_text(valid.read_text() + "g,NORMAL,0.2\n")  # tampered: sha256 no longer matches
    with pytest.raises(ModelFileError, match="does not match"):
        operating_points(load_export(tmp_path / "tiny.json"), 0.9)


def test_missing_class_folder_is_a_clear_error(done, tmp_path):
    make_split(tmp_path / "test", patients=1, first_id=1)
    shutil.rmtree(tmp_path / "test" / "PNEUMONIA")
    with pytest.raises(DataError, match=r"PNEUMONIA is missing.*one sub-folder per class"):
        evaluate(done.card, tmp_path, n_boot=10)
    with pytest.raises(DataError, match="PNEUMONIA is missing"):
        load_test_set(tmp_path / "test")


def test_class_without_readable_images_is_a_clear_error(tmp_path):
    make_split(tmp_path / "test", patients=1, first_id=1)
    for f in (tmp_path / "test" / "NORMAL").iterdir():
        f.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match=r"NORMAL holds no readable .*2 file\(s\) left out"):
        load_test_set(tmp_path / "test")


def test_find_test_folder(tmp_path, monkeypatch):
    make_split(tmp_path / "kaggle" / "chest_xray" / "test", patients=1, first_id=1)
    assert find_test_folder(tmp_path / "kaggle") == tmp_path / "kaggle" / "chest_xray" / "test"
    assert find_test_folder(tmp_path / "kaggle" / "chest_xray").name == "test"
    own = tmp_path / "mine"
    own.mkdir()
    assert find_test_folder(tmp_path / "kaggle", test=own) == own  # --test wins over --data
    with pytest.raises(DataError, match="has no test/ split"):
        find_test_folder(own)
    with pytest.raises(DataError, match="No test data given"):
        find_test_folder()
    with pytest.raises(DataError, match="does not exist"):
        find_test_folder(test=tmp_path / "nope")


def test_bad_options_are_user_errors(done):
    with pytest.raises(PneumoError, match="target-sensitivity"):
        evaluate(done.card, done.data, target_sensitivity=1.5)
    with pytest.raises(PneumoError, match="n-boot"):
        evaluate(done.card, done.data, n_boot=0)


def test_cli_evaluate_prints_table_and_writes_report(done, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_DATA", str(done.data))
    out = tmp_path / "out"
    args = ["evaluate", str(done.card), "--out", str(out), "--n-boot", "200", "--n", "2"]
    args += ["--num-workers", "0", "--bs", "16", "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    for words in ("Sensitivity", "ROC AUC", "argmax (t = 0.500)", "card (t = ", "[", "left out"):
        assert words in result.output
    assert "TTA" not in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bootstrap"]["n_resamples"] == 200
    assert (out / "report.html").is_file() and (out / "plots" / "roc.png").is_file()


def test_evaluate_into_a_file_writes_lines_and_no_progress_bar(done, tmp_path):
    """Progress on (the default) with the output in a file: `track`'s start and end lines, and
    none of fastai's bars (carriage-return frames)."""
    log = tmp_path / "eval.log"
    args = ["evaluate", str(done.card), "--data", str(done.data), "--out", str(tmp_path / "out")]
    args += ["--n-boot", "10", "--n", "2", "--num-workers", "0", "--bs", "16", "--device", "cpu"]
    with open(log, "w") as f:
        code = subprocess.run(
            [sys.executable, "-m", "pneumo_fastai.cli", *args],
            stdout=f, stderr=subprocess.STDOUT, timeout=600,
        ).returncode  # fmt: skip
    text = log.read_text()
    assert code == 0, text
    assert "Predicting: " in text and " done in " in text
    assert "\r" not in text


def test_cli_reports_a_missing_test_split_without_traceback(done, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(done.card), "--data", str(tmp_path)])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError) and "no test/ split" in str(result.exception)


@pytest.mark.shared_data
def test_real_xrays_are_grouped_by_patient(done, tmp_path):
    shared = require_shared_data()
    for cls in CLASSES:
        by_patient: dict[str, list[Path]] = {}
        for f in sorted((shared / "train" / cls).glob("*.jpeg")):
            by_patient.setdefault(patient_id(f), []).append(f)
        # five patients with two images each, and five with one
        pairs = [fs[:2] for fs in by_patient.values() if len(fs) >= 2][:5]
        singles = [fs[:1] for fs in by_patient.values() if len(fs) == 1][:5]
        (tmp_path / "test" / cls).mkdir(parents=True)
        for src in [f for fs in pairs + singles for f in fs]:
            shutil.copy(src, tmp_path / "test" / cls / src.name)
    ev = evaluate(done.card, test=tmp_path / "test", n_boot=N_BOOT, num_workers=0)
    ts = ev.run.test_set
    assert len(ts.files) == 30 and ts.skipped == ()
    assert ts.patients() == [patient_id(f) for f in ts.files]
    summary = ev.summaries["plain"]["card"]
    assert summary["n_groups"] == len(set(ts.patients())) == 2 * (5 + 5)
    assert ts.fingerprint() == fingerprint(ts.files, tmp_path)
    for fig in summary["metrics"].values():
        if fig["value"] is not None:
            assert fig["ci_low"] - 1e-9 <= fig["value"] <= fig["ci_high"] + 1e-9
    assert all(math.isfinite(p) for p in ev.run.probabilities["plain"])
    assert set(CLASSES) == set(ts.counts())


def test_flagged_images_are_counted_and_the_figures_given_without_them(done, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(done.data / "test", test)
    rng = np.random.RandomState(3)
    colour = np.stack([rng.randint(150, 255, (90, 76)), rng.randint(0, 60, (90, 76)),
                       rng.randint(0, 60, (90, 76))], axis=-1).astype(np.uint8)  # fmt: skip
    Image.fromarray(colour, "RGB").save(test / "NORMAL" / "IM-9500-0001.jpeg")
    ev = evaluate(done.card, test=test, n_boot=50, num_workers=0, bs=16)
    files = [f.name for f in ev.run.test_set.files]
    assert ev.run.ood is not None and ev.run.ood[files.index("IM-9500-0001.jpeg")]
    ood = ev.ood
    assert ood["n_images"] == len(files) and ood["flagged"] == int(ev.run.ood.sum()) >= 1
    assert ood["flagged_by_class"]["NORMAL"] >= 1
    kept = ood["without_flagged"]
    assert kept["n_samples"] == len(files) - ood["flagged"]
    report = write_report(ev, {}, tmp_path / "report")
    assert json.loads(report.metrics.read_text())["ood"]["flagged"] == ood["flagged"]
    with open(report.predictions, newline="") as f:
        rows = {r["file"].split("/")[-1]: r for r in csv.DictReader(f)}
    assert rows["IM-9500-0001.jpeg"]["ood"] == "true"
    assert "without the flagged" in report.markdown.read_text()
