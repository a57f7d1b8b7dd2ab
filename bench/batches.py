"""What tells the two NORMAL acquisition batches apart, in what a network can read from the pixels.

    python bench/batches.py                      # ../shared/data/chest_xray/train
    python bench/batches.py --data /path/chest_xray/train --models a.json b.json

Kermany's NORMAL images come in two batches named `NORMAL2-IM-*` and `IM-*`; the official test's
NORMAL errors sit in `NORMAL2-IM-*` (70 % of its NORMALs, 55 % of train's). For every training
image this measures simple image statistics (brightness, contrast, dark border, corner markers,
sharpness, JPEG bytes per pixel) and prints their medians per group (the two NORMAL batches and
PNEUMONIA). Then a 5-fold cross-validated logistic regression on those statistics alone (no
network) gives two ROC AUCs: `NORMAL2-IM-*` against `IM-*` (how far apart the batches are), and
each NORMAL batch against PNEUMONIA (how much of the label such cheap cues carry, per batch: a
batch that looks more like PNEUMONIA on them is where a shortcut costs NORMAL recall).

Then the shortcut at a new site: the same logistic regression, fitted on all of `--data`, scores
`--site` (half A of the official test split): the share of its NORMALs, and of train's (out of
fold), that the statistics alone call PNEUMONIA. For each of `--models` (export cards), its
NORMAL errors on the site at the card's threshold against that statistics-only score: the
median score of the NORMALs it gets wrong and of those it gets right, and the ROC AUC of the
statistics-only score for telling them apart (0.5: its errors do not follow the shortcut).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from benchlib import SHARED_DATA, machine_line, print_table
from robustness import normal_batch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pneumo_fastai import load_model
from pneumo_fastai.data.images import load_xray
from pneumo_fastai.data.layout import list_split
from pneumo_fastai.data.names import label_of

FEATURES = {
    "mean": "mean gray level (0-255)",
    "contrast": "standard deviation of gray levels",
    "p5": "5th percentile (how dark the darkest parts are)",
    "p95": "95th percentile (how bright bone and markers are)",
    "dark": "share of pixels below 20 (black borders, collimation)",
    "border": "mean of the outer 8 % frame",
    "corner": "brightest 1 % of the four 20 % corners (text markers)",
    "sharpness": "mean absolute Laplacian (edges, noise, JPEG blocks)",
    "bytes": "JPEG bytes per pixel of the stored file",
}


def statistics(path: Path) -> list[float]:
    """The FEATURES of one image, in their order."""
    x = np.asarray(load_xray(path), dtype=np.float32)
    h, w = x.shape
    b, c = max(1, int(0.08 * min(h, w))), int(0.2 * min(h, w))
    frame = np.concatenate([x[:b].ravel(), x[-b:].ravel(), x[:, :b].ravel(), x[:, -b:].ravel()])
    corners = np.concatenate([x[:c, :c].ravel(), x[:c, -c:].ravel(), x[-c:, :c].ravel(),
                              x[-c:, -c:].ravel()])  # fmt: skip
    lap = np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:])
    return [
        float(x.mean()), float(x.std()), *map(float, np.percentile(x, [5, 95])),
        float(np.mean(x < 20)), float(frame.mean()), float(np.percentile(corners, 99)),
        float(lap.mean()), path.stat().st_size / (h * w),
    ]  # fmt: skip


def cv_auc(x: np.ndarray, y: np.ndarray) -> float:
    """5-fold cross-validated ROC AUC of a logistic regression on standardised statistics."""
    from sklearn.metrics import roc_auc_score

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    p = cross_val_predict(model, x, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


SITE = SHARED_DATA.parent / "official_test_a"


def shortcut_at_site(x: np.ndarray, y: np.ndarray, site: Path, models: list[Path]) -> None:
    """The statistics-only model, fitted on train, at the site; the models' NORMAL errors on it."""
    from sklearn.metrics import roc_auc_score

    stats_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    files = list_split(site).all_images()
    ys = np.array([label_of(f) == "PNEUMONIA" for f in files])
    score = stats_model.predict_proba(np.array([statistics(f) for f in files]))[:, 1]
    oof = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                            x, y, cv=5, method="predict_proba")[:, 1]  # fmt: skip
    print(f"\nThe statistics-only model at {site} ({(~ys).sum()} NORMAL, {ys.sum()} PNEUMONIA):")
    print_table(
        ["NORMALs it calls PNEUMONIA (P >= 0.5)", "share", "ROC AUC"],
        [["train (5-fold, out of fold)", f"{np.mean(oof[y == 0] >= 0.5):.3f}",
          f"{roc_auc_score(y, oof):.3f}"],
         ["site", f"{np.mean(score[~ys] >= 0.5):.3f}", f"{roc_auc_score(ys, score):.3f}"]],
    )  # fmt: skip
    rows = []
    for card in models:
        model = load_model(card, precision="fp32")
        p = np.array([q.probability for q in model.predict_batch(files, bs=64)])
        wrong = (p >= model.threshold) & ~ys
        right = (p < model.threshold) & ~ys
        follows = roc_auc_score(wrong[~ys], score[~ys]) if wrong.any() and right.any() else np.nan
        rows.append([
            card.stem, f"{right.sum() / (~ys).sum():.3f}", f"{wrong.sum()}",
            f"{np.median(score[wrong]):.2f}" if wrong.any() else "-",
            f"{np.median(score[right]):.2f}" if right.any() else "-", f"{follows:.3f}",
        ])  # fmt: skip
    if rows:
        print("\nNORMAL errors on the site at each card's threshold, against that score:")
        print_table(["model", "NORMAL recall", "NORMALs wrong", "median score, wrong",
                     "median score, right", "AUC score: wrong vs right"], rows)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", type=Path, default=SHARED_DATA / "train", help="a NORMAL/PNEUMONIA folder"
    )
    p.add_argument("--site", type=Path, default=SITE, help="a new site's NORMAL/PNEUMONIA folder")
    p.add_argument("--models", type=Path, nargs="*", default=[], help="export cards to check")
    args = p.parse_args()
    print(machine_line())
    files = list_split(args.data).all_images()
    group = np.array([normal_batch(f) if label_of(f) == "NORMAL" else "PNEUMONIA" for f in files])
    x = np.array([statistics(f) for f in files])
    names = ["NORMAL2", "IM", "PNEUMONIA"]
    rows = [
        [key, *(f"{np.median(x[group == g, i]):.3g}" for g in names), FEATURES[key]]
        for i, key in enumerate(FEATURES)
    ]
    counts = [f"{g} ({np.sum(group == g):,})" for g in names]
    print(f"\nMedians per group, {args.data}:")
    print_table(["statistic", *counts, "what it measures"], rows)
    normal = group != "PNEUMONIA"
    print("\nLogistic regression on these statistics alone, 5-fold cross-validated ROC AUC:")
    aucs = [["NORMAL2-IM-* vs IM-*", f"{cv_auc(x[normal], group[normal] == 'NORMAL2'):.3f}"]]
    for batch in ("NORMAL2", "IM"):
        keep = (group == batch) | (group == "PNEUMONIA")
        aucs.append(
            [f"PNEUMONIA vs {batch} NORMALs", f"{cv_auc(x[keep], group[keep] == 'PNEUMONIA'):.3f}"]
        )
    print_table(["task", "AUC"], aucs)
    if args.site.is_dir():
        shortcut_at_site(x, (group == "PNEUMONIA").astype(int), args.site, args.models)


if __name__ == "__main__":
    main()
