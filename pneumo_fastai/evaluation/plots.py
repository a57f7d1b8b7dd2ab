"""Plots of an export on a test set, as PNG files: confusion matrices and top losses (fastai's
`ClassificationInterpretation`), ROC and PR curves with the operating points, a reliability
diagram, probability histograms, training curves, and a Grad-CAM gallery.

    pneumo-fastai interpret exports/pneumo_resnet34.json --data data/chest_xray --n 9

    from pneumo_fastai.evaluation.plots import interpret
    plots = interpret("exports/pneumo_resnet34.json", data="data/chest_xray")  # name -> PNG path

Grad-CAM (`gradcam.py`) weighs layer4's activations by the mean gradient of the PNEUMONIA logit,
so warm colours mark the evidence for PNEUMONIA, whatever the true class.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from fastai.interpret import ClassificationInterpretation
from fastai.torch_core import to_np
from matplotlib.figure import Figure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from ..card import ExportPaths
from ..config import CLASSES
from ..figures.metrics import expected_calibration_error, reliability_curve
from ..progress import interactive
from .evaluate import MODE_NAMES, REPORTS, EvalRun, OperatingPoint, run_test_set
from .gradcam import CAM_STRIDE, CamLayer, grad_cam, unnormalize_gray

PLOTS = "plots"  # sub-folder of the report folder that holds the PNGs
_DPI = 110
_CAM_BATCH = 16  # images per Grad-CAM forward/backward pass
_MARKERS = ("o", "s", "D")
CAPTIONS: dict[str, str] = {
    "confusion_matrix": "Confusion matrix, counts (argmax rule; fastai)",
    "confusion_matrix_normalized": "Confusion matrix, row-normalised (argmax rule; fastai)",
    "top_losses": "Top losses (fastai): prediction / actual / loss / probability",
    "roc": "ROC curve with the operating points",
    "pr": "Precision-recall curve with the operating points",
    "reliability": "Reliability diagram (calibration of P(PNEUMONIA))",
    "histograms": "P(PNEUMONIA) per true class, with the thresholds",
    "training_curves": "Training curves from the run's history (best epoch marked)",
    "gradcam_top_losses": "Grad-CAM (PNEUMONIA logit, layer4) on the top losses",
    "gradcam_correct": "Grad-CAM (PNEUMONIA logit, layer4) on a sample of correct cases",
}


class XrayInterpretation(ClassificationInterpretation):
    """fastai's `ClassificationInterpretation`, running inference for the confusion matrix once."""

    def confusion_matrix(self) -> np.ndarray:
        """Confusion matrix (rows actual, columns predicted by argmax), computed on first use."""
        if getattr(self, "_confusion", None) is None:
            self._confusion = super().confusion_matrix()
        return self._confusion


@contextmanager
def agg_pyplot() -> Iterator[None]:
    """pyplot on the Agg backend for fastai's plotting calls; the previous backend is restored."""
    previous = matplotlib.get_backend()
    if previous.lower() != "agg":
        plt.switch_backend("Agg")
    try:
        yield
    finally:
        if previous.lower() != "agg":
            plt.switch_backend(previous)


def _grid(n: int, ncols: int = 4, size: float = 3.0) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(size * ncols, (size + 0.6) * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def gradcam_gallery(
    run: EvalRun,
    idxs: Sequence[int],  # positions in `run.test_set.files`
    title: str,
    losses: Sequence[float],  # one per item, shown in its panel's title
    cam_layer: CamLayer = "layer4",  # the layer Grad-CAM explains
) -> Figure:
    """Grad-CAM overlaid on the X-rays of test items `idxs`, titled with label and probability."""
    files = [run.test_set.files[i] for i in idxs]
    dl = run.exported.dataloader(files, bs=_CAM_BATCH, num_workers=0)
    batches = [b[0] for b in dl]
    classes = run.exported.card.classes
    many = run.class_probs is not None  # 3 classes: explain each image's predicted class
    targets = run.class_probs[list(idxs)].argmax(axis=1) if many else np.ones(len(idxs), int)
    starts = np.cumsum([0, *(len(xb) for xb in batches)])
    heat = np.concatenate([
        grad_cam(run.exported.learner.model, xb, cam_layer, torch.as_tensor(targets[a:b]))
        for xb, a, b in zip(batches, starts[:-1], starts[1:], strict=True)
    ])  # fmt: skip
    images = np.concatenate([unnormalize_gray(xb) for xb in batches])
    p, y, t = run.probabilities["plain"], run.y, run.decision.threshold
    fig, axes = _grid(len(files))
    panels = zip(axes, idxs, images, heat, losses, targets, strict=True)
    for ax, i, img, cam, loss, target in panels:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        predicted = CLASSES[int(p[i] >= t)]
        explained = f", CAM of {classes[target]}" if many else ""
        ax.set_title(
            f"true {CLASSES[y[i]]}, pred {predicted}{explained}\n"
            f"P(PNEUMONIA) {p[i]:.3f}, loss {loss:.2f}",
            fontsize=9,
        )
        ax.axis("off")
    what = "of each image's predicted class" if many else "of the PNEUMONIA logit"
    grid = max(1, images.shape[-1] // CAM_STRIDE[cam_layer])
    fig.suptitle(
        f"{title}: Grad-CAM {what} on {cam_layer}, a {grid}x{grid} grid (red: evidence for it)\n"
        f"predictions at the decision threshold {run.decision.label}"
    )
    return fig


def _rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Sensitivity, 1 - specificity and precision of `p >= threshold`."""
    pred = p >= threshold
    sens = float(pred[y == 1].mean())
    fpr = float(pred[y == 0].mean())
    precision = float((y[pred] == 1).mean()) if pred.any() else float("nan")
    return sens, fpr, precision


def roc_figure(
    y: np.ndarray, probabilities: dict[str, np.ndarray], points: Sequence[OperatingPoint]
) -> Figure:
    """ROC curve per inference mode, operating points marked on the plain curve."""
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    for mode, p in probabilities.items():
        fpr, tpr, _ = roc_curve(y, p)
        style = "-" if mode == "plain" else "--"
        ax.plot(fpr, tpr, style, label=f"{MODE_NAMES[mode]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    p = probabilities["plain"]
    for pt, marker in zip(points, _MARKERS, strict=False):
        sens, fpr, _ = _rates(y, p, pt.threshold)
        ax.plot(fpr, sens, marker, ms=9, mfc="none", mew=2, label=pt.label)
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="Sensitivity (true positive rate)",
        title="ROC curve, PNEUMONIA as positive",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pr_figure(
    y: np.ndarray, probabilities: dict[str, np.ndarray], points: Sequence[OperatingPoint]
) -> Figure:
    """Precision-recall curve per inference mode, operating points marked on the plain curve."""
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    for mode, p in probabilities.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ap = average_precision_score(y, p)
        style = "-" if mode == "plain" else "--"
        ax.plot(recall, precision, style, label=f"{MODE_NAMES[mode]} (AP {ap:.3f})")
    ax.axhline(y.mean(), ls=":", color="grey", label=f"prevalence {y.mean():.2f}")
    p = probabilities["plain"]
    for pt, marker in zip(points, _MARKERS, strict=False):
        sens, _, precision = _rates(y, p, pt.threshold)
        ax.plot(sens, precision, marker, ms=9, mfc="none", mew=2, label=pt.label)
    ax.set(
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        title="Precision-recall curve, PNEUMONIA as positive",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
    )
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def reliability_figure(y: np.ndarray, p: np.ndarray) -> Figure:
    """Observed PNEUMONIA fraction against mean predicted probability per bin, with counts."""
    curve = reliability_curve(y, p)
    fig = Figure(figsize=(6, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = curve.count > 0
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    top.plot(curve.mean_predicted[full], curve.observed_fraction[full], "o-", label="model")
    top.set(
        ylabel="Observed fraction PNEUMONIA",
        title=f"Reliability diagram (ECE {expected_calibration_error(y, p):.3f})",
        xlim=(0, 1),
        ylim=(-0.02, 1.02),
    )
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    width = np.diff(curve.edges)
    bottom.bar(curve.edges[:-1], curve.count, width=width, align="edge", edgecolor="white")
    bottom.set(xlabel="Predicted P(PNEUMONIA)", ylabel="Images")
    fig.tight_layout()
    return fig


def histogram_figure(y: np.ndarray, p: np.ndarray, points: Sequence[OperatingPoint]) -> Figure:
    """Histograms of P(PNEUMONIA) for each true class, thresholds as vertical lines."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 26)
    for c, name in enumerate(CLASSES):
        ax.hist(p[y == c], bins=bins, alpha=0.55, label=f"true {name} (n={int((y == c).sum())})")
    for pt, style in zip(points, ("--", "-.", ":"), strict=False):
        ax.axvline(pt.threshold, ls=style, color="black", label=pt.label)
    ax.set(
        xlabel="Predicted P(PNEUMONIA)",
        ylabel="Images",
        title="Predicted probability by true class",
        xlim=(0, 1),
    )
    ax.legend(fontsize=8)
    return fig


def read_history(path: Path) -> dict[str, list[float]]:
    """Columns of fastai's CSVLogger history as floats (the `time` column is left out)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0] if rows else {}) if c != "time"]
    return {
        c: [float(r[c]) if r[c] not in ("", "nan") else math.nan for r in rows] for c in columns
    }


def training_figure(history: dict[str, list[float]], best_epoch: int | None) -> Figure:
    """Train/valid loss and validation metrics per epoch, best epoch marked."""
    fig = Figure(figsize=(11, 4.5))
    losses, metrics = fig.subplots(1, 2)
    epochs = history.get("epoch", list(range(len(next(iter(history.values()), [])))))
    for name in ("train_loss", "valid_loss"):
        if name in history:
            losses.plot(epochs, history[name], "o-", label=name.replace("_", " "))
    for name, values in history.items():
        if name not in ("epoch", "train_loss", "valid_loss"):
            metrics.plot(epochs, values, "o-", label=name.replace("_", " "))
    for ax, title, ylabel in ((losses, "Loss", "loss"), (metrics, "Validation metrics", "value")):
        if best_epoch is not None:
            ax.axvline(best_epoch, ls="--", color="grey", label=f"best epoch {best_epoch}")
        ax.set(title=title, xlabel="Epoch", ylabel=ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _save_pyplot(path: Path) -> Path:
    """Save pyplot's current figure (the one fastai just drew) and close it."""
    fig = plt.gcf()
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _correct_sample(run: EvalRun, n: int, exclude: set[int], seed: int) -> list[int]:
    """Up to `n` correctly classified items (at the decision threshold), half from each class."""
    pred = (run.probabilities["plain"] >= run.decision.threshold).astype(np.int64)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in range(len(CLASSES)):
        pool = [i for i in np.flatnonzero((pred == run.y) & (run.y == c)) if i not in exclude]
        take = min(len(pool), math.ceil(n / 2) if c == 0 else n - len(chosen))
        chosen += sorted(int(i) for i in rng.choice(pool, size=take, replace=False))
    return chosen


def draw_all(
    run: EvalRun,
    out_dir: Path,  # receives one PNG per plot
    n_top: int = 9,  # top losses to show (and explain with Grad-CAM)
    n_correct: int = 8,  # correct cases in the Grad-CAM gallery
    seed: int = 0,  # picks the correct cases
    progress: bool = False,
    cam_layer: CamLayer = "layer4",  # the layer the Grad-CAM galleries explain
) -> dict[str, Path]:
    """Draw every plot into `out_dir`; returns plot name -> PNG path, in report order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y, p = run.y, run.probabilities["plain"]
    learn = run.exported.learner_for(run.dl)
    plots: dict[str, Path] = {}
    k = max(1, min(n_top, len(y)))
    with agg_pyplot(), nullcontext() if progress and interactive() else learn.no_bar():
        interp = XrayInterpretation.from_learner(learn, dl=run.dl)
        for name, normalize in (("confusion_matrix", False), ("confusion_matrix_normalized", True)):
            interp.plot_confusion_matrix(
                normalize=normalize, title=CAPTIONS[name], figsize=(5.5, 5.5)
            )
            plots[name] = _save_pyplot(out_dir / f"{name}.png")
        interp.plot_top_losses(k, figsize=(3.4 * min(k, 3), 3.8 * math.ceil(k / 3)), ncols=3)
        plots["top_losses"] = _save_pyplot(out_dir / "top_losses.png")
        top_losses, top_idx = interp.top_losses(k)
    plots["roc"] = _save(roc_figure(y, run.probabilities, run.points), out_dir / "roc.png")
    plots["pr"] = _save(pr_figure(y, run.probabilities, run.points), out_dir / "pr.png")
    plots["reliability"] = _save(reliability_figure(y, p), out_dir / "reliability.png")
    plots["histograms"] = _save(histogram_figure(y, p, run.points), out_dir / "histograms.png")
    history = ExportPaths.for_name(run.exported.card_path.parent, run.name).history
    if history.is_file():
        best = run.exported.card.training.best_epoch
        fig = training_figure(read_history(history), best)
        plots["training_curves"] = _save(fig, out_dir / "training_curves.png")
    top = [int(i) for i in to_np(top_idx)]
    fig = gradcam_gallery(run, top, "Top losses", to_np(top_losses).tolist(), cam_layer)
    plots["gradcam_top_losses"] = _save(fig, out_dir / "gradcam_top_losses.png")
    correct = _correct_sample(run, n_correct, set(top), seed)
    if correct:
        losses = -np.log(np.where(y[correct] == 1, p[correct], 1 - p[correct]).clip(1e-12))
        title = "Correct cases (random sample)"
        fig = gradcam_gallery(run, correct, title, losses.tolist(), cam_layer)
        plots["gradcam_correct"] = _save(fig, out_dir / "gradcam_correct.png")
    return plots


def interpret(
    model: Path | str,  # export: NAME.json, NAME.safetensors or NAME.pkl
    data: Path | str | None = None,  # dataset root; its test/ split is used
    test: Path | str | None = None,  # or any folder with NORMAL/ and PNEUMONIA/
    out: Path | str | None = None,  # report folder; plots go to its plots/ (reports/NAME/)
    *,
    n: int = 9,  # top losses to show
    trust_pickle: bool = False,
    device: str = "auto",
    precision: str = "auto",
    bs: int = 64,
    num_workers: int | None = None,
    target_sensitivity: float | None = None,
    seed: int = 0,
    progress: bool = False,
    cam_layer: CamLayer = "layer4",  # the layer Grad-CAM explains
) -> dict[str, Path]:
    """Only the plots (no bootstrap, no report): plot name -> PNG path."""
    run = run_test_set(
        model, data, test, trust_pickle=trust_pickle, device=device, precision=precision,
        bs=bs, num_workers=num_workers, target_sensitivity=target_sensitivity, seed=seed,
        progress=progress,
    )  # fmt: skip
    out_dir = Path(out) if out is not None else REPORTS / run.name
    return draw_all(
        run, out_dir / PLOTS, n_top=n, seed=seed, progress=progress, cam_layer=cam_layer
    )
