"""Predict a folder of chest X-rays with an export, the fastai way and the pneumo_fastai way.

    python examples/predict_folder.py exports/pneumo_resnet34.json ../shared/data/chest_xray/train

1. fastai: `load_learner` on NAME.pkl, then `learn.predict(Path(...))` one file at a time. It gives
   the argmax class; apply the card's threshold yourself. Unpickling runs code from the file, so
   the example checks the pickle's sha256 against the model card first.
2. pneumo_fastai: `load_model`, which checks the card and loads the weights-only NAME.safetensors
   without unpickling, then `predict_batch`: batched, every format `load_xray` reads, the card's
   threshold applied, and an error row (not an exception) for an unreadable file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastai.learner import load_learner

import pneumo_fastai
from pneumo_fastai.card import read_card, verify_file
from pneumo_fastai.inference.inputs import expand_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="export's model card, NAME.json")
    parser.add_argument("folder", type=Path, help="folder of X-rays (searched recursively)")
    parser.add_argument("--limit", type=int, default=8, help="predict at most this many files")
    args = parser.parse_args()
    files = expand_inputs([args.folder])[: args.limit]

    print("1. fastai: load_learner + learn.predict")
    card = read_card(args.model)
    threshold = card.decision_threshold.value
    learn = load_learner(verify_file(card, args.model, "pkl"), cpu=True)
    for f in files[:3]:
        label, _, probs = learn.predict(f)  # a path, str, PIL image, numpy array or bytes
        p = float(probs[1])
        at_threshold = card.classes[int(p >= threshold)]
        print(
            f"  {f.name}: P(PNEUMONIA)={p:.3f}, argmax {label}, at {threshold:.3g} {at_threshold}"
        )

    print("2. pneumo_fastai: load_model + predict_batch")
    model = pneumo_fastai.load_model(args.model, device="cpu")
    for pred in model.predict_batch(files, bs=32, progress=True):
        if pred.ok:
            print(f"  {Path(pred.file).name}: P(PNEUMONIA)={pred.probability:.3f} -> {pred.label}")
        else:
            print(f"  {Path(pred.file).name}: cannot be read: {pred.error}")


if __name__ == "__main__":
    main()
