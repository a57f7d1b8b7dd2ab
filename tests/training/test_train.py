"""End to end: train on a few dozen real X-rays, export, reload in a fresh process; interrupt and
fail on the tiny dataset."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from fastai.callback.core import Callback
from PIL import Image

from pneumo_fastai.errors import DataError
from pneumo_fastai.fileio import sha256_file
from pneumo_fastai.training.train import train

from ..helpers.system import one_torch_thread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet34-random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pretrained(trained, real_config, weights_file):
    """The pretrained path (a local weights file) on the 60 real X-rays: the run's result."""
    return trained(real_config.replace(pretrained=True, weights=weights_file)).result


def test_export_writes_pickle_weights_card_and_history(pretrained):
    paths = pretrained.paths
    for p in (paths.pkl, paths.weights, paths.card, paths.history, paths.valid):
        assert p.is_file() and p.stat().st_size > 0
    card = json.loads(paths.card.read_text())
    assert card["files"]["pkl"]["sha256"] == sha256_file(paths.pkl)
    assert card["files"]["weights"]["sha256"] == sha256_file(paths.weights)
    assert card["classes"] == ["NORMAL", "PNEUMONIA"]
    assert card["config"]["weights"] and card["architecture"]["frozen"].startswith("stem..layer3")
    assert card["data"]["n_train"] + card["data"]["n_valid"] == 60
    assert 0 <= card["training"]["best_epoch"] < card["training"]["epochs_run"] <= 2
    assert 0.0 <= card["decision_threshold"]["value"] <= 1.0
    assert card["validation"]["at_threshold"]["sensitivity"] >= 0.95
    assert not list(paths.card.parent.glob(".*.tmp")), "no temp files left behind"


def test_balanced_loader_draws_both_classes_in_the_first_epoch(pretrained):
    fractions = pretrained.card.training.balanced_first_epoch_fractions
    assert set(fractions) == {"NORMAL", "PNEUMONIA"}
    assert 0.2 < fractions["NORMAL"] < 0.8  # 2:1 imbalance in the split, ~1:1 drawn


def test_patient_split_recorded_and_patient_disjoint(pretrained):
    from pneumo_fastai.data.names import patient_id

    learn = pretrained.learner
    train_ids = {patient_id(p) for p in learn.dls.train_ds.items}
    valid_ids = {patient_id(p) for p in learn.dls.valid_ds.items}
    assert not train_ids & valid_ids
    assert pretrained.card.data.split_mode == "patient"


def test_load_learner_predicts_in_a_fresh_process(pretrained, real_subset):
    image = sorted((real_subset / "train" / "PNEUMONIA").iterdir())[0]
    script = (
        "import sys, pathlib, warnings; warnings.simplefilter('ignore')\n"
        "import pneumo_fastai\n"
        "from fastai.learner import load_learner\n"
        "learn = load_learner(sys.argv[1])\n"
        "label, idx, probs = learn.predict(pathlib.Path(sys.argv[2]))\n"
        "print(label, float(probs.sum()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(pretrained.paths.pkl), str(image)],
        capture_output=True, text=True, timeout=300, cwd=pretrained.paths.pkl.parent,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    label, total = out.stdout.split()
    assert label in {"NORMAL", "PNEUMONIA"} and abs(float(total) - 1) < 1e-5


def test_learn_predict_takes_what_pilimage_create_takes(pretrained, real_subset, tmp_path):
    from fastai.learner import load_learner

    jpeg = sorted((real_subset / "train" / "PNEUMONIA").iterdir())[0]
    png = tmp_path / "scan.png"  # PNG: no JPEG draft decoding, so a decoded copy is the same
    Image.open(jpeg).save(png)
    learn = load_learner(pretrained.paths.pkl)
    inputs = {
        "str": str(png),
        "Path": png,
        "PIL": Image.open(png),
        "array": np.asarray(Image.open(png)),
        "bytes": png.read_bytes(),
    }
    probs = {kind: float(learn.predict(x)[2][1]) for kind, x in inputs.items()}
    assert len(set(probs.values())) == 1, probs
    assert float(learn.predict(jpeg.read_bytes())[2][1]) == float(learn.predict(str(jpeg))[2][1])


def test_weights_file_loads_without_unpickling_code(pretrained):
    state = torch.load(pretrained.paths.weights, weights_only=True)
    assert set(state) == set(pretrained.learner.model.state_dict())


class _SignalAt(Callback):
    """Sends SIGINT to this process `times` times at the first batch of epoch `epoch`."""

    def __init__(self, epoch: int, times: int):
        self.at, self.times = epoch, times

    def after_batch(self):
        if self.training and self.epoch == self.at and self.times:
            while self.times:
                self.times -= 1
                os.kill(os.getpid(), signal.SIGINT)


def test_first_interrupt_stops_after_the_batch_and_exports_the_best_so_far(tiny_config, tmp_path):
    config = tiny_config.replace(size=32, epochs=4, exports=tmp_path)
    with one_torch_thread():
        result = train(config, progress=False, log=lambda _: None, cbs=[_SignalAt(1, 1)])
    t = result.card.training
    assert t.interrupted and t.interrupted_at_epoch == 1 and t.best_epoch == 0
    assert result.paths.pkl.is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_interrupt_aborts_and_writes_nothing(tiny_config, tmp_path):
    config = tiny_config.replace(size=32, epochs=4, exports=tmp_path)
    with one_torch_thread(), pytest.raises(KeyboardInterrupt):
        train(config, progress=False, log=lambda _: None, cbs=[_SignalAt(1, 2)])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_leaves_an_existing_export_untouched(tiny_config, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    old = exports / "pneumo_resnet34.pkl"
    old.write_bytes(b"previous good export")
    broken = tmp_path / "broken"
    for cls in ("NORMAL", "PNEUMONIA"):
        (broken / "train" / cls).mkdir(parents=True)
        for src in sorted((tiny_config.data / "train" / cls).iterdir())[:6]:
            (broken / "train" / cls / src.name).write_bytes(src.read_bytes())
    (broken / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"")
    with pytest.raises(DataError, match=r"IM-9999-0001\.jpeg"):
        train(tiny_config.replace(data=broken, exports=exports), progress=False, log=lambda _: None)
    assert old.read_bytes() == b"previous good export"
    assert sorted(p.name for p in exports.iterdir()) == ["pneumo_resnet34.pkl"]
