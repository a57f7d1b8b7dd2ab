"""The Kaggle layout: roots, train + val discovery, skipped files, layout errors, fingerprints."""

import pytest

from pneumo_fastai.data.layout import discover, fingerprint, resolve_root
from pneumo_fastai.errors import DataError

from ..helpers.data import make_dataset, write_image


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


def test_fingerprint_names_the_file_list_not_its_order(dataset):
    files = list(discover(dataset).files)
    assert fingerprint(files, dataset) == fingerprint(files[::-1], dataset)
    assert fingerprint(files[1:], dataset) != fingerprint(files, dataset)
