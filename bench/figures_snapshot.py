"""The card's figures and `predict`'s probabilities of one fixed small training, to compare commits.

    PYTHONPATH=. python bench/figures_snapshot.py DATA after.json           # this checkout
    PYTHONPATH=../old python bench/figures_snapshot.py DATA before.json     # another checkout
    python bench/figures_snapshot.py --compare before.json after.json

A restructure must leave them identical: the same seed and config give the same card (every
section but the times, versions and the date), the same `NAME.valid.csv`, and the same fp32
probabilities on 16 of DATA's JPEGs (to within PROBABILITY_NOISE: see below). Trains from
scratch on `--per-class` images per class at 32 px for one epoch on the CPU (a minute on two
idle cores). DATA is a Kaggle-layout folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

# Two runs of one checkout's `predict` on one export differ by up to ~1e-6 on a loaded 2-core
# CPU (fp32 kernels pick their code paths at run time); the card and valid.csv do not.
PROBABILITY_NOISE = 1e-5
VOLATILE = {  # card fields that change from run to run whatever the code
    "created": None,
    "versions": None,
    "training": ("seconds", "seconds_per_epoch", "phases", "distributed"),
}


def _stable(card: dict) -> dict:
    out = {k: v for k, v in card.items() if k not in VOLATILE or VOLATILE[k] is not None}
    out["training"] = {k: v for k, v in card["training"].items() if k not in VOLATILE["training"]}
    out["config"] = {k: v for k, v in card["config"].items() if k != "exports"}  # a temp folder
    out["files"] = sorted(card["files"])  # the pickle's bytes name module paths: kinds only
    return out


def snapshot(data: Path, per_class: int) -> dict:
    """Train the fixed config into a temp folder; its card, valid.csv and test probabilities."""
    import torch

    from pneumo_fastai import TrainConfig, load_model, train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as exports:
        config = TrainConfig(
            data=data, exports=Path(exports), name="snap", size=32, epochs=1, bs=8,
            num_workers=0, pretrained=False, seed=42, device="cpu", precision="fp32",
            channels_last=False, limit=per_class, cache=False,
        )  # fmt: skip
        result = train(config, progress=False, log=lambda _: None)
        card = json.loads(result.paths.card.read_text())
        valid = result.paths.valid.read_text()
        jpegs = sorted(Path(data).rglob("*.jpeg"))
        test = jpegs[:: max(1, len(jpegs) // 16)][:16]
        model = load_model(result.paths.card, precision="fp32")
        probs = {p.relative_to(data).as_posix(): q.probability for p, q in
                 zip(test, model.predict_batch(test), strict=True)}  # fmt: skip
    return {"card": _stable(card), "valid_csv": valid, "test_probabilities": probs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs=2, type=Path, help="DATA OUT.json, or with --compare A B")
    p.add_argument("--compare", action="store_true", help="compare two snapshots")
    p.add_argument("--per-class", type=int, default=24, help="training images per class")
    args = p.parse_args()
    if args.compare:
        a, b = (json.loads(path.read_text()) for path in args.paths)
        same = True
        for key in ("card", "valid_csv"):
            if a[key] != b[key]:
                same = False
                keys = (
                    sorted(k for k in a[key] if a[key][k] != b[key].get(k)) if key == "card" else []
                )
                print(f"{key} differs" + (f" in: {', '.join(keys)}" if keys else ""))
        pa, pb = a["test_probabilities"], b["test_probabilities"]
        gap = max(abs(pa[f] - pb[f]) for f in pa) if pa.keys() == pb.keys() else math.inf
        print(f"card and valid.csv {'identical' if same else 'DIFFERENT'}; "
              f"test probabilities: largest difference {gap:.2g}")  # fmt: skip
        sys.exit(0 if same and gap <= PROBABILITY_NOISE else 1)
    data, out = args.paths
    out.write_text(json.dumps(snapshot(data, args.per_class), indent=1, sort_keys=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
