"""`check_dataset` on small folders built to hold each problem, and on the real train split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_fastai.cli.render import print_dataset_report
from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.split import image_split
from pneumo_fastai.datatools.check import check_dataset
from pneumo_fastai.errors import DataError

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data" / "chest_xray"


def _img(path: Path, seed: int, fmt: str = "JPEG", **save) -> Path:
    """A noisy 40x32 grayscale image: distinct seeds give distinct pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (32, 40), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path, format=fmt, **save)
    return path


def _clean(root: Path) -> Path:
    """train, val and test with both classes and no patient shared between splits."""
    seed = 0
    for split, n in (("train", 4), ("val", 1), ("test", 2)):
        for _ in range(n):
            seed += 1
            _img(root / split / "NORMAL" / f"IM-{seed:04d}-0001.jpeg", seed)
            seed += 1
            _img(root / split / "PNEUMONIA" / f"person{seed}_bacteria_{seed}.jpeg", seed)
    return root


def test_clean_dataset_is_ok(tmp_path):
    report = check_dataset(_clean(tmp_path / "ds"))
    assert report.ok and report.problems == [] and report.warnings == []
    assert report.counts == {
        "train": {"NORMAL": 4, "PNEUMONIA": 4},
        "val": {"NORMAL": 1, "PNEUMONIA": 1},
        "test": {"NORMAL": 2, "PNEUMONIA": 2},
    }
    assert report.patients == {"train": 8, "val": 2, "test": 4}
    assert report.duplicates == [] and report.shared_patients == [] and report.issues == []
    assert report.modes == {"L": 14} and report.formats == {"JPEG": 14}
    assert report.sizes["most_common"] == [{"width": 40, "height": 32, "images": 14}]
    assert report.balance()["train"] == {"pneumonia_fraction": 0.5, "ratio": 1.0}
    preview = report.split_preview["patient"]
    assert preview["train"] + preview["valid"] == 10 and preview["patients_straddling"] == 0
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["duplicates"]["groups"] == 0


def test_finds_pixel_duplicates_within_and_across_splits(tmp_path):
    root = _clean(tmp_path / "ds")
    within = [root / "train/NORMAL/IM-0100-0001.jpeg", root / "train/NORMAL/IM-0101-0002.jpeg"]
    for path in within:
        _img(path, 100)
    # Same pixels, different bytes: PNG at two compression levels.
    _img(root / "train/PNEUMONIA/person200_virus_1.png", 200, "PNG", compress_level=1)
    _img(root / "test/PNEUMONIA/person201_virus_2.png", 200, "PNG", compress_level=9)
    _img(root / "train/NORMAL/IM-0300-0001.jpeg", 300)
    _img(root / "train/PNEUMONIA/person300_bacteria_1.jpeg", 300)
    report = check_dataset(root)
    assert [g.files for g in report.duplicates] == [
        ("test/PNEUMONIA/person201_virus_2.png", "train/PNEUMONIA/person200_virus_1.png"),
        ("train/NORMAL/IM-0100-0001.jpeg", "train/NORMAL/IM-0101-0002.jpeg"),
        ("train/NORMAL/IM-0300-0001.jpeg", "train/PNEUMONIA/person300_bacteria_1.jpeg"),
    ]
    assert report.duplicate_summary() == {
        "groups": 3,
        "files": 6,
        "within_split_groups": 2,
        "cross_split_groups": 1,
        "test_leak_groups": 1,
        "label_conflict_groups": 1,
    }
    text = " ".join(report.warnings)
    assert "3 group(s) of exact pixel duplicates (6 files)" in text
    assert "both train/val and test" in text and "different labels" in text
    assert report.ok, "duplicates are warnings, not problems"
    assert check_dataset(root, quick=True).duplicates == [], "quick mode does not hash pixels"


def test_finds_empty_unreadable_corrupt_and_non_image_files(tmp_path):
    root = _clean(tmp_path / "ds")
    normal = root / "train" / "NORMAL"
    (normal / "IM-0500-0001.jpeg").write_bytes(b"")
    (normal / "IM-0501-0001.jpeg").write_text("not an image at all")
    whole = _img(tmp_path / "whole.jpeg", 502).read_bytes()
    (normal / "IM-0502-0001.jpeg").write_bytes(whole[: len(whole) // 2])
    (normal / "notes.txt").write_text("radiologist notes")
    _img(root / "test" / "NORMAL" / "IM-0503-0001.jpeg", 503).write_bytes(b"")
    report = check_dataset(root)
    kinds = {i.path: i.kind for i in report.issues}
    assert kinds == {
        "train/NORMAL/IM-0500-0001.jpeg": "empty",
        "train/NORMAL/IM-0501-0001.jpeg": "unreadable",
        "train/NORMAL/IM-0502-0001.jpeg": "corrupt",
        "train/NORMAL/notes.txt": "not_image",
        "test/NORMAL/IM-0503-0001.jpeg": "empty",
    }
    assert report.ok
    text = " ".join(report.warnings)
    assert "3 image file(s) in train/val cannot be read" in text
    assert "1 image file(s) in test cannot be read" in text
    assert "1 file(s) in class folders are not images" in text
    quick = {i.path: i.kind for i in check_dataset(root, quick=True).issues}
    assert "train/NORMAL/IM-0502-0001.jpeg" not in quick, "a header scan cannot see truncation"
    assert quick["train/NORMAL/IM-0501-0001.jpeg"] == "unreadable"


def test_missing_class_is_fatal(tmp_path):
    root = _clean(tmp_path / "ds")
    shutil.rmtree(root / "train" / "PNEUMONIA")
    report = check_dataset(root)
    assert not report.ok
    assert any("train/PNEUMONIA is missing" in p for p in report.problems)
    assert report.split_preview == {}, "no split preview for an unsound dataset"


def test_missing_class_in_test_is_only_a_warning(tmp_path):
    root = _clean(tmp_path / "ds")
    shutil.rmtree(root / "test" / "NORMAL")
    report = check_dataset(root)
    assert report.ok and any("test/NORMAL is missing" in w for w in report.warnings)


def test_empty_split_is_fatal(tmp_path):
    root = _clean(tmp_path / "ds")
    for cls in ("NORMAL", "PNEUMONIA"):
        shutil.rmtree(root / "val" / cls)
        (root / "val" / cls).mkdir()
    report = check_dataset(root)
    assert any("val/ split is empty" in p for p in report.problems)
    assert any("val/NORMAL holds no" in p for p in report.problems)


def test_no_train_folder_is_fatal_and_a_missing_path_raises(tmp_path):
    root = tmp_path / "ds"
    _img(root / "test" / "NORMAL" / "IM-0001-0001.jpeg", 1)
    report = check_dataset(root)
    assert not report.ok and "no train/ folder" in report.problems[0]
    with pytest.raises(DataError, match="does not exist"):
        check_dataset(tmp_path / "nowhere")


def test_patient_shared_between_train_and_test(tmp_path):
    root = _clean(tmp_path / "ds")
    _img(root / "train" / "PNEUMONIA" / "person77_bacteria_1.jpeg", 771)
    _img(root / "test" / "PNEUMONIA" / "person77_virus_9.jpeg", 772)
    _img(root / "val" / "NORMAL" / "NORMAL2-IM-0088-0001.jpeg", 881)
    _img(root / "test" / "NORMAL" / "NORMAL2-IM-0088-0002.jpeg", 882)
    report = check_dataset(root, quick=True)
    assert report.shared_patients == ["NORMAL2-IM-0088", "person77"]
    assert any("2 patient(s) have images in both train/val and test" in w for w in report.warnings)


def test_split_preview_counts_duplicates_on_both_sides(tmp_path):
    root = tmp_path / "ds"
    for k in range(12):  # every patient has two identical images
        for n in (1, 2):
            _img(root / "train" / "NORMAL" / f"IM-{k:04d}-{n:04d}.jpeg", 1000 + k)
            _img(root / "train" / "PNEUMONIA" / f"person{k}_bacteria_{n}.jpeg", 2000 + k)
    report = check_dataset(root, config=TrainConfig(seed=3, valid_pct=0.3))
    assert report.duplicate_summary()["groups"] == 24
    patient = report.split_preview["patient"]
    assert patient["duplicate_groups_straddling"] == 0 and patient["patients_straddling"] == 0
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpeg"))
    train_idx, _ = image_split(len(files), 0.3, 3)
    side = {f: i in set(train_idx) for i, f in enumerate(files)}
    expected = sum(len({side[f] for f in g.files}) > 1 for g in report.duplicates)
    assert report.split_preview["image"]["duplicate_groups_straddling"] == expected
    assert report.split_preview["image"]["patients_straddling"] == expected


def test_print_report_renders_without_error(tmp_path, capsys):
    root = _clean(tmp_path / "ds")
    shutil.rmtree(root / "train" / "NORMAL")
    print_dataset_report(check_dataset(root))
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "NOT fit for training" in out


@pytest.mark.shared_data
def test_real_train_split():
    if not SHARED.is_dir():
        pytest.skip(f"shared chest X-rays not found at {SHARED.resolve()}")
    quick = check_dataset(SHARED, quick=True)
    assert quick.ok
    assert quick.counts == {"train": {"NORMAL": 1341, "PNEUMONIA": 3875}}
    assert quick.issues == [] and quick.modes == {"L": 5216}
    assert quick.sizes["distinct"] == 1
    full = check_dataset(SHARED)
    summary = full.duplicate_summary()
    assert (summary["groups"], summary["files"], summary["within_split_groups"]) == (24, 50, 24)
    assert full.split_preview["patient"]["duplicate_groups_straddling"] == 0
