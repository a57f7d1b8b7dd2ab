"""`train --exclude LIST.csv`: which files a list removes, and the card's record of it."""

import csv
import json
from pathlib import Path

import pytest

from pneumo_fastai.data.exclude import read_exclusions
from pneumo_fastai.errors import DataError
from pneumo_fastai.fileio import sha256_file


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_plain_list_removes_every_file_it_names(tmp_path):
    listed = _write(tmp_path / "l.csv", [{"file": "train/NORMAL/a.jpeg"}, {"file": "train\\B.png"}])
    got = read_exclusions(listed)
    assert got.files == {"train/NORMAL/a.jpeg", "train/B.png"}
    assert got.sha256 == sha256_file(listed)


def test_an_audit_table_removes_only_its_suspects(tmp_path):
    rows = [
        {"file": "train/NORMAL/a.jpeg", "label": "NORMAL", "suspect": "True"},
        {"file": "train/NORMAL/b.jpeg", "label": "NORMAL", "suspect": "False"},
        {"file": "train/PNEUMONIA/c.jpeg", "label": "PNEUMONIA", "suspect": "1"},
    ]
    got = read_exclusions(_write(tmp_path / "label_issues.csv", rows))
    assert got.files == {"train/NORMAL/a.jpeg", "train/PNEUMONIA/c.jpeg"}


@pytest.mark.parametrize(
    ("content", "said"),
    [(None, "not found"), ("name\nx.jpeg\n", "no `file` column"), ("", "no `file` column")],
)
def test_a_bad_list_is_refused_with_a_message(tmp_path, content, said):
    path = tmp_path / "l.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=said):
        read_exclusions(path)


def test_training_leaves_the_listed_images_out_and_the_card_says_so(trained, tiny_config, tmp_path):
    gone = ["train/NORMAL/IM-0000-0001.jpeg", "train/PNEUMONIA/person3_bacteria_2.jpeg"]
    rows = [{"file": f, "suspect": "true"} for f in gone] + [
        {"file": "train/NORMAL/IM-0001-0001.jpeg", "suspect": "false"},
        {"file": "train/NORMAL/not-in-the-dataset.jpeg", "suspect": "true"},
    ]
    listed = _write(tmp_path / "suspects.csv", rows)
    run = trained(tiny_config.replace(size=32, ood=False, exclude=listed))
    dataset, result = run.config.data, run.result
    used = {f.relative_to(dataset).as_posix() for f in result.learner.dls.train_ds.items}
    used |= {f.relative_to(dataset).as_posix() for f in result.learner.dls.valid_ds.items}
    assert len(used) == 36 - 2 and not used & set(gone)
    card = json.loads(result.paths.card.read_text())
    assert card["data"]["excluded"] == {
        "source": str(listed), "sha256": sha256_file(listed), "listed": 3, "removed": 2,
    }  # fmt: skip
    assert card["config"]["exclude"] == str(listed)
    said = [m for m in run.messages if "Leaving out 2 training image(s)" in m]
    assert any("1 listed name" in m for m in said)
