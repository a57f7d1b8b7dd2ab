"""Old exports rebuilt for the tests that read them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SCHEMA1 = Path(__file__).resolve().parents[1] / "fixtures" / "schema1"


def old_export_with_fresh_weights(folder: Path) -> Path:
    """The schema-1 card and CSVs, with random weights of its architecture where the .pth was."""
    import torch

    from pneumo_fastai.config import TrainConfig
    from pneumo_fastai.fileio import sha256_file
    from pneumo_fastai.model import build_model

    for f in SCHEMA1.glob("schema1.*"):
        shutil.copy(f, folder / f.name)
    card = json.loads((SCHEMA1 / "schema1.json").read_text())
    torch.manual_seed(0)
    weights = folder / "schema1.pth"
    torch.save(build_model(TrainConfig.from_dict(card["config"])).state_dict(), weights)
    card["files"]["weights"]["sha256"] = sha256_file(weights)
    (folder / "schema1.json").write_text(json.dumps(card))
    return folder / "schema1.json"
