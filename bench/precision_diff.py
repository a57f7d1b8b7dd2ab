"""How far bf16 inference lands from the fp32 outputs a card is fitted on, on labelled images.

    python bench/precision_diff.py exports/pneumo_resnet34.json --test /path/holdout/test

The card's temperature, threshold and validation figures are fitted on fp32 outputs (every
engine can reproduce them); `predict --precision auto` runs bf16 on CPUs that have it. This
predicts the same images both ways with `load_model` and prints the largest, mean and median
|P_bf16 - P_fp32|, how many decisions at the card's threshold differ, and ROC AUC, specificity
and sensitivity at each precision.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from benchlib import machine_line, print_table
from robustness import LabelledSet
from sklearn.metrics import roc_auc_score

from pneumo_fastai import load_model
from pneumo_fastai.card import read_card


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("card", type=Path, help="an export's card (NAME.json)")
    p.add_argument("--test", type=Path, required=True, help="a NORMAL/PNEUMONIA folder")
    args = p.parse_args()
    print(machine_line())
    test = LabelledSet.of(args.test, read_card(args.card).input.size)  # decoded as predict does
    y = test.y
    probs, threshold = {}, 0.5
    for precision in ("fp32", "bf16"):
        model = load_model(args.card, precision=precision)
        results = model.predict_batch(test.images, bs=64)
        probs[precision] = np.array([r.probability for r in results])
        threshold = model.threshold
    d = np.abs(probs["bf16"] - probs["fp32"])
    flips = int(np.sum((probs["fp32"] >= threshold) != (probs["bf16"] >= threshold)))
    print(
        f"{args.card.name}: {len(y)} images, threshold {threshold:.3f}; |P_bf16 - P_fp32| "
        f"max {d.max():.4f}, mean {d.mean():.5f}, median {np.median(d):.5f}; decisions that "
        f"differ: {flips}"
    )
    rows = []
    for precision, p_ in probs.items():
        pred = p_ >= threshold
        rows.append([precision, f"{roc_auc_score(y, p_):.4f}", f"{np.mean(~pred[y == 0]):.3f}",
                     f"{np.mean(pred[y == 1]):.3f}"])  # fmt: skip
    print_table(["precision", "ROC AUC", "specificity", "sensitivity"], rows)


if __name__ == "__main__":
    main()
