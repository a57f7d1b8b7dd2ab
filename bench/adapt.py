"""Site adaptation, measured: the holdout resampled to other class mixes, and NIH, before and after.

    python bench/adapt.py exports/default-s42.json --test /path/holdout/chest_xray/test

For each set (the holdout as it is, resampled with replacement by image to 37.5 % and 60 %
NORMAL, and `--nih` as it is), `pneumo-fastai adapt` (`adapt_export`) estimates the site's
NORMAL share from the unlabelled images; the table gives the true share, the estimate and its
bootstrap interval, then specificity and sensitivity at the card's threshold before and after
adaptation. The labels are read only to score, never by the estimate. NIH is reported, never
tuned on.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from benchlib import SHARED_DATA, machine_line, print_table

from pneumo_fastai import load_model
from pneumo_fastai.data.layout import list_split
from pneumo_fastai.data.names import label_of
from pneumo_fastai.inference.adapt import adapt_export

NIH = SHARED_DATA.parent / "external_nih"


def resampled(files: list[Path], y: np.ndarray, normal_share: float, n: int, seed: int):
    """`n` images drawn with replacement so that `normal_share` of them are NORMAL."""
    rng = np.random.default_rng(seed)
    k = round(n * normal_share)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == 0), k), rng.choice(np.flatnonzero(y == 1), n - k)]
    )
    return [files[i] for i in idx], y[idx]


def link_site(files: list[Path], folder: Path) -> Path:
    """The site's images in one folder (repeats of a draw under their own names)."""
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        (folder / f"{i:05d}{f.suffix}").symlink_to(f.resolve())
    return folder


def spec_sens(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    pred = p >= t
    return float(np.mean(~pred[y == 0])), float(np.mean(pred[y == 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="export card (.json)")
    ap.add_argument("--test", type=Path, required=True, help="holdout folder (NORMAL/, PNEUMONIA/)")
    ap.add_argument("--nih", type=Path, default=NIH)
    ap.add_argument("--n", type=int, default=800, help="images per resampled set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine_line())
    files = list_split(args.test).all_images()
    y = np.array([int(label_of(f) == "PNEUMONIA") for f in files])
    sets = {f"holdout as is ({np.mean(y == 0):.1%} NORMAL)": (files, y)}
    for share in (0.375, 0.60):
        sets[f"holdout at {share:.1%} NORMAL"] = resampled(files, y, share, args.n, args.seed)
    if args.nih and Path(args.nih).is_dir():
        nih = list_split(args.nih).all_images()
        labels = np.array([int(label_of(f) == "PNEUMONIA") for f in nih])
        sets["NIH adults (external)"] = (nih, labels)
    base = load_model(args.model, precision="fp32")
    t = base.threshold
    rows = []
    with tempfile.TemporaryDirectory(prefix="pneumo-adapt-") as tmp:
        for k, (name, (site_files, labels)) in enumerate(sets.items()):
            site = link_site(site_files, Path(tmp) / f"site{k}")
            result = adapt_export(args.model, site, f"site{k}", Path(tmp), precision="fp32")
            adapted = load_model(result.card_path, precision="fp32")
            order = sorted(site.iterdir())
            truth = labels[[int(f.stem) for f in order]]
            before = np.array([q.probability for q in base.predict_batch(order)])
            after = np.array([q.probability for q in adapted.predict_batch(order)])
            lo, hi = result.card.adaptation.interval["NORMAL"]
            sb, nb = spec_sens(before, truth, t)
            sa, na = spec_sens(after, truth, t)
            rows.append([
                name, len(order), f"{np.mean(truth == 0):.3f}",
                f"{result.card.adaptation.target['NORMAL']:.3f} [{lo:.3f}, {hi:.3f}]",
                f"{sb:.3f} -> {sa:.3f}", f"{nb:.3f} -> {na:.3f}",
            ])  # fmt: skip
            shutil.rmtree(site)
    print(f"{args.model}: threshold {t:.3f}, source NORMAL share {result.shift.source[0]:.3f}")
    print_table(
        ["set", "images", "true NORMAL", "estimated [95% interval]", "specificity", "sensitivity"],
        rows,
    )


if __name__ == "__main__":
    main()
