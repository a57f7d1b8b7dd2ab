import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data import (
    SeededSplitter,
    build_dataloaders,
    discover,
    find_unreadable,
    fingerprint,
    image_split,
    label_of,
    limit_per_class,
    patient_id,
    patient_split,
    resolve_root,
)
from pneumo_fastai.errors import DataError

from .conftest import make_dataset, require_shared_data, write_image


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person12_bacteria_3.jpeg", "person12"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0587-0001-0002.jpeg", "NORMAL2-IM-0587"),
        ("scan_from_elsewhere.png", "scan_from_elsewhere"),
    ],
)
def test_patient_id_parses_kermany_names(name, expected):
    assert patient_id(Path("x") / name) == expected


def test_discover_merges_train_and_val_and_never_reads_test(tmp_path):
    root = make_dataset(tmp_path / "d", val=True)
    write_image(root / "test" / "NORMAL" / "IM-7777-0001.jpeg", seed=1)
    write_image(root / "test" / "PNEUMONIA" / "person7777_virus_1.jpeg", seed=2)
    ds = discover(root)
    names = {f.name for f in ds.files}
    assert len(ds.files) == 36 + 2
    assert "NORMAL2-IM-9001-0001.jpeg" in names and "IM-7777-0001.jpeg" not in names
    assert ds.counts() == {"NORMAL": 13, "PNEUMONIA": 25}
    rel = [f.relative_to(root).as_posix() for f in ds.files]
    assert rel == sorted(rel)


def test_extensions_match_case_insensitively_and_others_are_skipped(dataset):
    write_image(dataset / "train" / "NORMAL" / "IM-5000-0001.JPG", seed=3)
    write_image(dataset / "train" / "NORMAL" / "IM-5001-0001.Png", seed=4, mode="RGB")
    (dataset / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (dataset / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0")
    ds = discover(dataset)
    names = {f.name for f in ds.files}
    assert {"IM-5000-0001.JPG", "IM-5001-0001.Png"} <= names
    assert [p.name for p in ds.skipped] == ["notes.txt"]


def test_resolve_root_accepts_the_kaggle_zip_nesting(tmp_path):
    make_dataset(tmp_path / "download" / "chest_xray")
    assert resolve_root(tmp_path / "download") == tmp_path / "download" / "chest_xray"


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("no_train", "has no train/"),
        ("no_class", "PNEUMONIA is missing"),
        ("empty_class", "holds no"),
    ],
)
def test_bad_layouts_raise_a_clear_data_error(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "file":
        root.write_text("x")
    elif layout == "no_train":
        (root / "images").mkdir(parents=True)
    elif layout == "no_class":
        write_image(root / "train" / "NORMAL" / "IM-0001-0001.jpeg", seed=0)
    elif layout == "empty_class":
        write_image(root / "train" / "NORMAL" / "IM-0001-0001.jpeg", seed=0)
        (root / "train" / "PNEUMONIA").mkdir()
    with pytest.raises(DataError, match=message):
        discover(root)


def test_find_unreadable_reports_empty_and_corrupt_files(dataset):
    empty = dataset / "train" / "NORMAL" / "IM-6000-0001.jpeg"
    empty.write_bytes(b"")
    corrupt = dataset / "train" / "PNEUMONIA" / "person600_virus_1.jpeg"
    corrupt.write_bytes(b"definitely not a jpeg")
    bad = dict(find_unreadable(discover(dataset).files))
    assert set(bad) == {empty, corrupt}
    assert bad[empty] == "empty file"


def test_image_split_is_the_seeded_permutation_first_70_percent_train():
    train, valid = image_split(100, 0.3, seed=42)
    perm = np.random.RandomState(42).permutation(100)
    assert train == sorted(perm[:70].tolist()) and valid == sorted(perm[70:].tolist())
    assert image_split(100, 0.3, seed=43) != (train, valid)


def _split_stats(files, valid_pct=0.3, seed=42):
    train, valid = SeededSplitter(valid_pct, seed, "patient")(files)
    patients_train = {patient_id(files[i]) for i in train}
    patients_valid = {patient_id(files[i]) for i in valid}
    return train, valid, patients_train, patients_valid


def test_patient_split_keeps_each_patient_on_one_side_and_is_stratified(tmp_path):
    files = list(discover(make_dataset(tmp_path / "d", 40, 80)).files)
    train, valid, p_train, p_valid = _split_stats(files)
    assert not p_train & p_valid
    assert sorted(train + valid) == list(range(len(files)))
    per_class = Counter(label_of(files[i]) for i in valid)
    assert 10 <= per_class["NORMAL"] <= 14 and 22 <= per_class["PNEUMONIA"] <= 26


def test_patient_split_is_reproducible_and_seed_dependent(tmp_path):
    files = list(discover(make_dataset(tmp_path / "d", 40, 80)).files)
    assert SeededSplitter(0.3, 7)(files) == SeededSplitter(0.3, 7)(files)
    assert SeededSplitter(0.3, 7)(files) != SeededSplitter(0.3, 8)(files)


def test_a_patient_with_images_in_both_classes_is_not_split():
    labels = ["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL", "PNEUMONIA", "NORMAL"]
    groups = ["a", "a", "b", "c", "d", "e"]
    for seed in range(20):
        train, valid = patient_split(labels, groups, 0.5, seed)
        assert (0 in train) == (1 in train) and (0 in valid) == (1 in valid)


def test_splitter_survives_pickling(tmp_path):
    files = list(discover(make_dataset(tmp_path / "d")).files)
    splitter = SeededSplitter(0.25, 3, "image")
    assert pickle.loads(pickle.dumps(splitter))(files) == splitter(files)


def test_fingerprint_names_the_file_list_not_its_order(dataset):
    files = list(discover(dataset).files)
    assert fingerprint(files, dataset) == fingerprint(files[::-1], dataset)
    assert fingerprint(files[1:], dataset) != fingerprint(files, dataset)


def test_limit_per_class_samples_each_class(dataset):
    files = list(discover(dataset).files)
    kept = limit_per_class(files, 5, seed=0)
    assert Counter(label_of(f) for f in kept) == {"NORMAL": 5, "PNEUMONIA": 5}
    assert kept == limit_per_class(files, 5, seed=0)


def test_dataloaders_give_normalised_3_channel_batches_and_plain_validation(dataset):
    config = TrainConfig(data=dataset, size=32, bs=4, num_workers=0)
    dls = build_dataloaders(discover(dataset).files, config, device="cpu")
    assert list(dls.vocab) == ["NORMAL", "PNEUMONIA"]
    x, y = dls.one_batch()
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert -3 < x.mean() < 3 and set(y.tolist()) <= {0, 1}
    first = torch.cat([b[0] for b in dls.valid])
    second = torch.cat([b[0] for b in dls.valid])
    assert torch.equal(first, second), "validation must not be augmented or shuffled"


@pytest.mark.shared_data
def test_real_data_patient_split_is_disjoint_and_near_70_30():
    files = list(discover(require_shared_data()).files)
    _, valid, p_train, p_valid = _split_stats(files)
    assert len(files) == 5216 and not p_train & p_valid
    assert abs(len(valid) / len(files) - 0.3) < 0.01
    for cls in ("NORMAL", "PNEUMONIA"):
        n_cls = sum(label_of(f) == cls for f in files)
        n_valid = sum(label_of(files[i]) == cls for i in valid)
        assert abs(n_valid / n_cls - 0.3) < 0.01
