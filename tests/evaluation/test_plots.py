"""Plots and Grad-CAM on the tiny export evaluated once per session (`done`, conftest.py)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pneumo_fastai.card import ExportPaths
from pneumo_fastai.cli import app
from pneumo_fastai.evaluation.gradcam import grad_cam
from pneumo_fastai.evaluation.plots import CAPTIONS, read_history, training_figure

from ..helpers.evaluation import Done

pytestmark = pytest.mark.usefixtures("single_thread")


def _batch(done: Done, idxs: list[int]) -> torch.Tensor:
    run = done.ev.run
    files = [run.test_set.files[i] for i in idxs]
    return next(iter(run.exported.dataloader(files, bs=len(files), num_workers=0)))[0]


def test_grad_cam_is_an_image_sized_heatmap_in_unit_range(done):
    model = done.ev.run.exported.learner.model
    y = done.ev.run.y
    idxs = [int((y == 0).argmax()), int((y == 1).argmax())]  # one NORMAL, one PNEUMONIA
    xb = _batch(done, idxs)
    model.train()  # grad_cam must explain the eval-mode model and then restore this
    heat = grad_cam(model, xb)
    assert model.training
    model.eval()

    size = done.ev.run.exported.config.size
    assert heat.shape == (2, size, size) and heat.dtype == "float32"
    assert heat.min() >= 0 and heat.max() <= 1
    for h in heat:
        assert h.max() == pytest.approx(1) and h.min() == pytest.approx(0)  # not a flat map
    assert abs(heat[0] - heat[1]).mean() > 0.05  # two different X-rays, two different maps
    # each image is explained on its own (eval mode): batching changes nothing
    assert grad_cam(model, xb[1:]) == pytest.approx(heat[1:], abs=1e-4)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_every_plot_is_written_as_png(done):
    plots = done.plots
    always = set(CAPTIONS) - {"gradcam_correct"}  # a sample of correct cases needs some
    assert always <= set(plots) <= set(CAPTIONS)
    for name, path in plots.items():
        assert path.parent.name == "plots" and path.name == f"{name}.png"
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 300, name


def test_training_curves_read_the_history_and_mark_the_best_epoch(done):
    history = read_history(ExportPaths.for_name(done.card.parent, "tiny").history)
    assert {"epoch", "train_loss", "valid_loss", "accuracy"} <= set(history)
    assert "time" not in history and len(history["valid_loss"]) == 1
    fig = training_figure(history, best_epoch=0)
    losses, metrics = fig.axes
    assert [line.get_label() for line in losses.lines] == [
        "train loss",
        "valid loss",
        "best epoch 0",
    ]
    assert "accuracy" in [line.get_label() for line in metrics.lines]


def test_cli_interpret_writes_only_the_plots(done, tmp_path):
    out = tmp_path / "out"
    args = ["interpret", str(done.card), "--test", str(done.data / "test"), "--out", str(out)]
    args += ["--n", "2", "--num-workers", "0", "--no-progress", "--device", "cpu"]
    args += ["--trust-pickle"]  # fastai's own Learner and loaders draw as well
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (out / "plots").iterdir())
    assert {"confusion_matrix.png", "top_losses.png", "gradcam_top_losses.png"} <= set(written)
    assert sorted(p.name for p in out.iterdir()) == ["plots"]  # no metrics or report
    assert result.output.count("Wrote ") == len(written)
