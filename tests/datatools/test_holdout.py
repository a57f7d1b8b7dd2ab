from collections import Counter

import pytest

from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.names import label_of, patient_id
from pneumo_fastai.datatools.holdout import carve_holdout
from pneumo_fastai.errors import DataError

from ..helpers.data import make_dataset


def test_holdout_is_patient_disjoint_stratified_and_links_every_file(tmp_path):
    src = make_dataset(tmp_path / "src", n_normal=40, n_pneumonia=80)
    result = carve_holdout(src, tmp_path / "out", pct=0.25, seed=1)
    train = list((result.root / "train").rglob("*.jpeg"))
    test = list((result.root / "test").rglob("*.jpeg"))
    assert len(train) + len(test) == 120
    assert not {patient_id(p) for p in train} & {patient_id(p) for p in test}
    assert Counter(label_of(p) for p in test) == result.test
    assert 8 <= result.test["NORMAL"] <= 12 and 18 <= result.test["PNEUMONIA"] <= 22
    assert all(p.is_symlink() for p in test)
    assert len(discover(result.root).files) == len(train), "training never sees test/"


def test_holdout_copies_when_asked_and_refuses_a_non_empty_destination(tmp_path):
    src = make_dataset(tmp_path / "src")
    out = tmp_path / "out"
    carve_holdout(src, out, copy=True)
    assert not any(p.is_symlink() for p in out.rglob("*.jpeg"))
    with pytest.raises(DataError, match="not empty"):
        carve_holdout(src, out)
