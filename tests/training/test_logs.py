"""`train ... > run.log` in a fresh process: it exports, and its log is one a person can read, not a
progress bar per batch."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_a_log_file_gets_the_epoch_table_and_a_few_milestones(dataset, tmp_path):
    log, exports = tmp_path / "run.log", tmp_path / "exports"
    cmd = [
        sys.executable, "-m", "pneumo_fastai.cli", "train", "--data", str(dataset),
        "--exports", str(exports), "--name", "cli", "--size", "32", "--bs", "4", "--epochs", "3",
        "--patience", "3", "--no-pretrained", "--num-workers", "0", "--no-ood",
    ]  # fmt: skip
    with open(log, "w") as out:  # not a terminal
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.strip() and "Warning" not in line]
    assert "\r" not in text, "no progress-bar redraws in a file"
    table = [line.split() for line in lines if line.split()[0] in {"epoch", "0", "1", "2"}]
    assert [row[0] for row in table] == ["epoch", "0", "1", "2"], "a header, then one per epoch"
    assert table[0][:3] == ["epoch", "train_loss", "valid_loss"] and table[0][-1] == "time"
    assert all(len(row) == len(table[0]) for row in table)
    assert any(line.startswith("Caching decoded images in RAM") for line in lines)
    assert any(line.startswith("Exported ") for line in lines) and "best epoch" in text
    assert {p.name for p in exports.iterdir()} >= {"cli.pkl", "cli.safetensors", "cli.json"}
    # 27 training batches per epoch: a line for each would dwarf this
    assert len(lines) < 20, text
