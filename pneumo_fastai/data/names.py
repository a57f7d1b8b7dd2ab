"""What a file's place and name say: its class (the folder) and its patient (Kermany names).

label_of("train/PNEUMONIA/person12_bacteria_3.jpeg")   # "PNEUMONIA"
patient_id("person12_bacteria_3.jpeg")                 # "person12"
patient_id("NORMAL2-IM-0587-0001-0002.jpeg")           # "NORMAL2-IM-0587"
"""

from __future__ import annotations

import re
from pathlib import Path

_PATIENT_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
    re.compile(r"^(NORMAL2-IM-\d+)-\d+", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-\d+", re.IGNORECASE),
)


_SUBTYPE_WORDS = {"bacteria": "BACTERIA", "virus": "VIRUS"}


def label_of(path: Path | str) -> str:
    """Class of an image: the name of the folder it sits in."""
    return Path(path).parent.name


def subtype_of(path: Path | str) -> str | None:
    """NORMAL, BACTERIA or VIRUS; None for a PNEUMONIA file whose name says neither (or both).

    Kermany's PNEUMONIA files are named `person<ID>_<bacteria|virus>_<n>`: the word is the label,
    never guessed from anything else.
    """
    label = label_of(path)
    if label != "PNEUMONIA":
        return label
    stem = Path(path).stem.lower()
    found = {kind for word, kind in _SUBTYPE_WORDS.items() if word in stem}
    return found.pop() if len(found) == 1 else None


def label_fn(task: str):
    """How a file's label is read for a task: its folder (binary) or its name (subtype)."""
    return subtype_of if task == "subtype" else label_of


def patient_id(path: Path | str) -> str:
    """Patient id parsed from a Kermany file name; the file stem when the name has none."""
    stem = Path(path).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def has_patient_id(path: Path | str) -> bool:
    """Whether the file name carries a patient id (else `patient_id` is just the stem)."""
    return any(pattern.match(Path(path).stem) for pattern in _PATIENT_PATTERNS)
