"""Classes from folders and patient ids from Kermany file names."""

from pathlib import Path

import pytest

from pneumo_fastai.data.names import patient_id


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
