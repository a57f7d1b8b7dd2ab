"""`data.select`: one selection of the training images, and `data check` previews its split."""

from __future__ import annotations

import pytest

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.names import label_of
from pneumo_fastai.data.select import select, task_files, training_split
from pneumo_fastai.datatools.check import check_dataset
from pneumo_fastai.errors import DataError

from ..helpers.data import make_dataset, write_image


def test_a_plain_config_selects_every_training_image_of_the_folder(tmp_path):
    root = make_dataset(tmp_path / "ds", val=True)
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    chosen = select(TrainConfig(data=root))
    assert chosen.files == discover(root).files and len(chosen.files) == 38
    assert [n.split(":")[0] for n in chosen.notes] == [
        "Skipping 1 non-image file(s) in the class folders"
    ]


def test_the_subtype_task_leaves_out_names_that_say_neither_and_says_so(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_image(root / "train" / "PNEUMONIA" / "person77_3.jpeg", seed=7)  # neither kind
    chosen = select(TrainConfig(data=root, task="subtype"))
    assert len(chosen.files) == 36 and not any(f.name == "person77_3.jpeg" for f in chosen.files)
    assert "Leaving out 1 PNEUMONIA file(s)" in chosen.notes[0] and "person77_3" in chosen.notes[0]
    assert task_files(discover(root).files, "binary") == (list(discover(root).files), [])


def test_exclude_then_limit_per_class(tmp_path):
    root = make_dataset(tmp_path / "ds")
    listed = tmp_path / "out.csv"
    listed.write_text("file\ntrain/NORMAL/IM-0000-0001.jpeg\ntrain/NORMAL/gone.jpeg\n")
    chosen = select(TrainConfig(data=root, exclude=listed))
    assert len(chosen.files) == 35
    assert "Leaving out 1 training image(s)" in chosen.notes[0]
    assert "1 listed name(s) are not in" in chosen.notes[0]
    limited = select(TrainConfig(data=root, exclude=listed, limit=4))
    assert sorted(label_of(f) for f in limited.files) == ["NORMAL"] * 4 + ["PNEUMONIA"] * 4
    assert "IM-0000-0001.jpeg" not in {f.name for f in limited.files}


def test_no_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="--data"):
        select(TrainConfig())


def test_data_check_previews_the_split_training_makes_of_its_selection(tmp_path):
    root = make_dataset(tmp_path / "ds", n_normal=20, n_pneumonia=40)
    listed = tmp_path / "out.csv"
    names = [f.relative_to(root).as_posix() for f in sorted(root.rglob("*.jpeg"))[:6]]
    listed.write_text("file\n" + "\n".join(names) + "\n")
    config = TrainConfig(data=root, exclude=listed, limit=15, seed=3, valid_pct=0.3)
    report = check_dataset(root, quick=True, config=config)
    files = select(config).files
    train_idx, valid_idx = training_split(config)(files)
    preview = report.split_preview
    assert preview["images"] == len(files) == 29  # 20 - 6 NORMAL, 15 PNEUMONIA: not the 60
    assert (preview["patient"]["train"], preview["patient"]["valid"]) == (
        len(train_idx),
        len(valid_idx),
    )
    assert report.selection is not None and report.selection.files == files
    assert "selection" not in report.to_dict()


def test_the_datablock_splits_with_the_same_rule(tmp_path):
    from pneumo_fastai.data.block import xray_datablock

    root = make_dataset(tmp_path / "ds")
    config = TrainConfig(data=root, seed=5)
    files = list(select(config).files)
    assert xray_datablock(config).splitter(files) == training_split(config)(files)
