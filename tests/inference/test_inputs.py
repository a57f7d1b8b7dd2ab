"""`inputs.py`: what the paths, folders and globs given to `predict` expand to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pneumo_fastai.errors import DataError
from pneumo_fastai.inference.inputs import expand_inputs


def test_folders_are_searched_recursively_and_globs_expanded(
    kinds: list[Path], tmp_path: Path
) -> None:
    top = tmp_path / "scans"
    nested = top / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(kinds[0], top / "one.JPEG")
    shutil.copy(kinds[1], nested / "two.png")
    shutil.copy(kinds[8], nested / "IM0001")  # DICOM without a suffix
    (nested / "readme.txt").write_text("skip me")
    (top / ".hidden").mkdir()
    shutil.copy(kinds[1], top / ".hidden" / "three.png")
    shutil.copy(kinds[1], top / "._four.png")

    assert expand_inputs([top]) == [nested / "IM0001", nested / "two.png", top / "one.JPEG"]
    assert expand_inputs([f"{top}/**/*.png"]) == [nested / "two.png"]
    # a folder matched by a glob is searched; a file given twice is predicted once
    both = expand_inputs([f"{top}/*", top / "one.JPEG"])
    assert both == [nested / "IM0001", nested / "two.png", top / "one.JPEG"]
    explicit = nested / "readme.txt"
    assert expand_inputs([explicit]) == [explicit]  # named files are kept, then fail as rows
    with pytest.raises(DataError, match="nothing-here"):
        expand_inputs([top / "one.JPEG", tmp_path / "nothing-here"])
    with pytest.raises(DataError, match=r"\*\.dcm"):
        expand_inputs([f"{top}/*.dcm"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found"):
        expand_inputs([tmp_path / "empty"])
