"""A list of training files to leave out (`train --exclude LIST.csv`), e.g. an audit's suspects.

    listed = read_exclusions(Path("audit/label_issues.csv"))
    kept = [f for f in files if relative_name(f, root) not in listed.files]

The list is a CSV with a `file` column naming images relative to the dataset folder
(`train/NORMAL/IM-0115-0001.jpeg`), as `NAME.valid.csv` and `data audit`'s `label_issues.csv`
name them. When it also has a `suspect` column (`data audit`'s), only the rows marked true are
left out, so an audit's whole table can be passed as it is. The card records the list's sha256
and how many files it removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..fileio import read_csv_rows, sha256_file

TRUE = {"1", "true", "yes", "y", "t"}


@dataclass(frozen=True)
class Exclusions:
    """The files a list leaves out, and what identifies the list."""

    path: Path
    sha256: str
    files: frozenset[str]  # relative names, forward slashes


def read_exclusions(path: Path) -> Exclusions:
    """The files `path` lists (only its suspects, when it has a `suspect` column)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Exclusion list {path} not found: pass a CSV with a `file` column.")
    rows = read_csv_rows(path, "Exclusion list")
    if not rows or "file" not in rows[0]:
        raise DataError(
            f"Exclusion list {path} has no `file` column (or no rows): it needs a header line "
            "with `file` and one training image per row, relative to the dataset folder."
        )
    if "suspect" in rows[0]:
        rows = [r for r in rows if str(r["suspect"]).strip().lower() in TRUE]
    names = frozenset(r["file"].strip().replace("\\", "/") for r in rows if r["file"].strip())
    return Exclusions(path, sha256_file(path), names)
