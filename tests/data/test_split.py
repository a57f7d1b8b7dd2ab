"""The seeded splits: reference permutation, patient-grouped and stratified, per-class limit."""

import pickle
from collections import Counter

import numpy as np
import pytest

from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.names import label_of, patient_id
from pneumo_fastai.data.split import (
    SeededSplitter,
    image_split,
    limit_per_class,
    patient_folds,
    patient_split,
)

from ..helpers.data import make_dataset, require_shared_data


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


def test_limit_per_class_samples_each_class(dataset):
    files = list(discover(dataset).files)
    kept = limit_per_class(files, 5, seed=0)
    assert Counter(label_of(f) for f in kept) == {"NORMAL": 5, "PNEUMONIA": 5}
    assert kept == limit_per_class(files, 5, seed=0)


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


def test_patient_folds_are_disjoint_stratified_and_cover_every_image_once(tmp_path):
    files = list(discover(make_dataset(tmp_path / "d", 40, 80)).files)
    labels, groups = [label_of(f) for f in files], [patient_id(f) for f in files]
    folds = patient_folds(labels, groups, 5, seed=3)
    assert sorted(i for f in folds for i in f) == list(range(len(files)))
    patients = [{groups[i] for i in f} for f in folds]
    assert all(not a & b for j, a in enumerate(patients) for b in patients[j + 1 :])
    for f in folds:
        per_class = Counter(labels[i] for i in f)
        assert 6 <= per_class["NORMAL"] <= 10 and 14 <= per_class["PNEUMONIA"] <= 18
    assert folds == patient_folds(labels, groups, 5, seed=3)
    assert folds != patient_folds(labels, groups, 5, seed=4)


def test_the_splitter_validates_on_one_fold(tmp_path):
    files = list(discover(make_dataset(tmp_path / "d", 40, 80)).files)
    valid = [SeededSplitter(seed=1, folds=4, fold=k)(files)[1] for k in range(4)]
    assert sorted(i for v in valid for i in v) == list(range(len(files)))
    train, v0 = SeededSplitter(seed=1, folds=4, fold=0)(files)
    assert not set(train) & set(v0) and len(train) + len(v0) == len(files)


def test_patient_folds_refuse_too_few_patients():
    with pytest.raises(ValueError, match="cannot fill"):
        patient_folds(["NORMAL", "PNEUMONIA"], ["a", "b"], 3, seed=0)
