"""Temperature scaling on a held-out folder: ECE, Brier and NLL before and after, per export.

    python bench/calibration.py exports/a.json exports/b.json --test /path/holdout/chest_xray/test

Each export (a single model, either task) predicts the folder twice through its own fastai
pipeline: once as exported (softmax(logits / T), T fitted on its validation logits when it was
trained) and once with T set to 1, which is what the network gave before calibration. Figures
are on P(PNEUMONIA) against the folder's NORMAL/PNEUMONIA labels (15-bin ECE, Brier score) and,
on the class probabilities, the negative log-likelihood of the binary label. The decisions are
the same either way for a binary model (T is monotone); only the probabilities move.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from benchlib import machine_line, print_table

from pneumo_fastai.data.layout import list_split
from pneumo_fastai.data.names import label_of
from pneumo_fastai.figures.metrics import expected_calibration_error
from pneumo_fastai.inference.loading import load_export, positive_probability


def figures(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ECE, Brier and binary NLL of P(PNEUMONIA) `p` for labels `y` (1: PNEUMONIA)."""
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "ece": expected_calibration_error(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "nll": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", type=Path, nargs="+", help="single-model export cards (.json)")
    p.add_argument("--test", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--bs", type=int, default=64)
    args = p.parse_args()
    print(machine_line())
    files = list_split(args.test).all_images()
    y = np.array([int(label_of(f) == "PNEUMONIA") for f in files])
    rows = []
    for card in args.models:
        exported = load_export(card, device="cpu", precision="fp32")
        temperature = exported.card.temperature
        dl = exported.dataloader(files, bs=args.bs)
        with exported.learner.no_bar():
            after = positive_probability(exported.outputs(dl)[0])
            exported.learner.loss_func.temperature = 1.0
            before = positive_probability(exported.outputs(dl)[0])
        for name, probs in (("T = 1 (before)", before), (f"T = {temperature:.3f}", after)):
            f = figures(probs, y)
            rows.append(
                [card.stem, name, f"{f['ece']:.4f}", f"{f['brier']:.4f}", f"{f['nll']:.4f}"]
            )
    print(f"{len(files)} images from {args.test}")
    print_table(["export", "temperature", "ECE (15 bins)", "Brier", "NLL"], rows)


if __name__ == "__main__":
    main()
