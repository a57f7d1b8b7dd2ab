"""`adapt` measured on a real new site (half A of the official test) and on pure label shift.

    python bench/adapt.py exports/pneumo64.json --holdout /path/holdout/test
    python bench/adapt.py CARD --holdout H --site ../shared/data/official_test_a --draws 200

Each labelled set is predicted once by the export (fp32, unadapted, its OOD flags kept); every
figure below is computed from those predictions with the functions `adapt` itself runs:

1. **Unlabelled, on the site** (`adapt CARD SITE`, the site's labels read only to score): the
   label-shift test's verdict, the EM estimate of the NORMAL share against the truth, and
   accuracy, NORMAL and PNEUMONIA recall at the card's threshold before and after (after =
   before where the test declines the correction, as `adapt` then writes nothing).
2. **Labelled, on the site** (`adapt CARD --labels SAMPLE`): `--draws` random samples of n images
   of the site (n = 25, 40, 50, 100, 150), each fitted as `adapt --labels` fits and scored on the
   rest of the site: mean and 5th percentile of sensitivity, specificity and accuracy, and how
   many draws were refused (fewer than the minimum per class). Beside them, the oracle: the
   threshold at the same target sensitivity chosen on all the site's labels.
3. **False alarms on pure label shift**: `--draws` samples of 300 images of the holdout (no
   repeats), at 25 %, 37.5 % and 60 % NORMAL: how often the test rejects, and specificity and
   sensitivity before and after the correction on the draws it accepts.
4. **NIH** (adults from another hospital, `--nih`): the unlabelled path's verdict, reported.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchlib import SHARED_DATA, machine_line, print_table
from robustness import LabelledSet

from pneumo_fastai import load_model
from pneumo_fastai.card import card_path_of, read_card
from pneumo_fastai.inference.adapt import SHARE_CLIP
from pneumo_fastai.inference.label_shift_test import label_shift_test
from pneumo_fastai.inference.prior_shift import clipped_estimate, mean_shares
from pneumo_fastai.inference.site_labels import fit_site_labels, min_per_class, rescale
from pneumo_fastai.valid_csv import read_valid

SITE = SHARED_DATA.parent / "official_test_a"
NIH = SHARED_DATA.parent / "external_nih"
SIZES = (25, 40, 50, 100, 150)
SHARES = (0.25, 0.375, 0.60)


@dataclass(frozen=True)
class Scored:
    """A labelled set as the export sees it: P(PNEUMONIA), OOD flags, labels (1: PNEUMONIA)."""

    p: np.ndarray
    ood: np.ndarray
    y: np.ndarray


def scored(model, folder: Path, size: int) -> Scored:
    data = LabelledSet.of(folder, size)
    preds = model.predict_batch(data.images, bs=64)
    return Scored(
        np.array([q.probability for q in preds]), np.array([bool(q.ood) for q in preds]), data.y
    )


def rates(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float, float]:
    """Accuracy, NORMAL recall (specificity) and PNEUMONIA recall (sensitivity) at `t`."""
    pred = p >= t
    return float(np.mean(pred == y)), float(np.mean(~pred[y == 0])), float(np.mean(pred[y == 1]))


def unlabelled(s: Scored, p_valid, y_valid, t: float, seed: int = 0):
    """The label-shift test on `s` and the figures before and after the correction."""
    keep = ~s.ood
    test = label_shift_test(s.p[keep], p_valid, y_valid, n_flagged=int(s.ood.sum()), seed=seed)
    shift = clipped_estimate(s.p[keep], mean_shares(p_valid), SHARE_CLIP)
    after = shift.apply(np.column_stack([1 - s.p, s.p]))[:, 1]
    return test, float(shift.target[0]), rates(s.p, s.y, t), rates(after, s.y, t)


def oracle_threshold(p: np.ndarray, y: np.ndarray, target: float) -> float:
    """The highest threshold at which sensitivity on all of `p` is >= target."""
    pos = np.sort(p[y == 1])
    return float(pos[int(np.floor((1 - target) * len(pos) + 1e-9))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="export card (.json)")
    ap.add_argument("--holdout", type=Path, required=True, help="holdout NORMAL/ PNEUMONIA/ folder")
    ap.add_argument("--site", type=Path, default=SITE)
    ap.add_argument("--nih", type=Path, default=NIH)
    ap.add_argument("--draws", type=int, default=200, help="draws per sample size and per share")
    args = ap.parse_args()
    print(machine_line())
    card_path = card_path_of(args.model)
    card = read_card(card_path)
    model = load_model(card_path, precision="fp32")
    t, size = model.threshold, card.input.size
    target = card.decision_threshold.target_sensitivity or 0.95
    valid = read_valid(card, card_path)
    p_valid, y_valid = valid.probability, valid.y
    site, holdout = scored(model, args.site, size), scored(model, args.holdout, size)
    print(f"{card_path}: threshold {t:.3f}, target sensitivity {target}; site {args.site} "
          f"({len(site.y)} images, {np.mean(site.y == 0):.3f} NORMAL, {site.ood.sum()} "
          f"flagged); holdout {args.holdout}; {args.draws} draws")  # fmt: skip

    print("\n1. Unlabelled adapt on the site (and NIH), labels read only to score:")
    rows = []
    sets = {"site": site} | ({"NIH": scored(model, args.nih, size)} if args.nih.is_dir() else {})
    for name, s in sets.items():
        test, est, before, after = unlabelled(s, p_valid, y_valid, t)
        shown = before if test.rejected else after
        rows.append([
            name, f"{np.mean(s.y == 0):.3f}", f"{est:.3f}", f"{test.p_value:.3f}",
            f"{test.ood_share:.3f} (p {test.ood_p_value:.2g})",
            "declined" if test.rejected else "applied",
            *(f"{b:.3f} -> {a:.3f}" for b, a in zip(before, shown, strict=True)),
            "/".join(f"{x:.3f}" for x in after),
        ])  # fmt: skip
    print_table(
        ["set", "true NORMAL", "EM estimate", "CvM p", "OOD share", "correction", "accuracy",
         "NORMAL recall", "PNEUMONIA recall", "if forced: acc/NORMAL/PNEU"], rows,
    )  # fmt: skip

    print("\n2. Labelled adapt: fitted on n random images of the site, scored on the rest:")
    t_all = oracle_threshold(site.p, site.y, target)
    acc_all, spec_all, sens_all = rates(site.p, site.y, t_all)
    need = min_per_class(target)
    rng = np.random.default_rng(0)
    rows = []
    for n in SIZES:
        got, refused = [], 0
        for _ in range(args.draws):
            idx = rng.permutation(len(site.y))
            sample, rest = idx[:n], idx[n:]
            sample = sample[~site.ood[sample]]
            ys = site.y[sample]
            if np.sum(ys == 0) < need["NORMAL"] or np.sum(ys == 1) < need["PNEUMONIA"]:
                refused += 1
                continue
            fit = fit_site_labels(site.p[sample], ys, target)
            got.append(rates(rescale(site.p[rest], fit.scale), site.y[rest], fit.threshold))
        if not got:
            rows.append([n, f"{refused}/{args.draws}", *["-"] * 6])
            continue
        g = np.array(got)
        rows.append([
            n, f"{refused}/{args.draws}",
            *(f"{g[:, k].mean():.3f}" for k in (0, 1, 2)),
            *(f"{np.percentile(g[:, k], 5):.3f}" for k in (0, 1, 2)),
        ])  # fmt: skip
    rows.append(["all (oracle)", "-", f"{acc_all:.3f}", f"{spec_all:.3f}", f"{sens_all:.3f}",
                 "-", "-", "-"])  # fmt: skip
    rows.append(["none (card)", "-", *(f"{x:.3f}" for x in rates(site.p, site.y, t)), "-", "-",
                 "-"])  # fmt: skip
    print_table(
        ["n labelled", "refused", "accuracy", "specificity", "sensitivity", "acc 5th pct",
         "spec 5th pct", "sens 5th pct"], rows,
    )  # fmt: skip
    print(f"(minimum per class: {need}; oracle: threshold {t_all:.3f} at sensitivity >= "
          f"{target} on all {len(site.y)} site labels)")  # fmt: skip

    print("\n3. False alarms on pure label shift: 300 holdout images drawn without repeats:")
    rows = []
    normal, pneumonia = np.flatnonzero(holdout.y == 0), np.flatnonzero(holdout.y == 1)
    for share in SHARES:
        k = round(300 * share)
        alarms, before, after = 0, [], []
        for d in range(args.draws):
            picked = rng.choice(normal, k, replace=False), rng.choice(pneumonia, 300 - k, False)
            idx = np.concatenate(picked)
            s = Scored(holdout.p[idx], holdout.ood[idx], holdout.y[idx])
            test, _, b, a = unlabelled(s, p_valid, y_valid, t, seed=d)
            alarms += test.rejected
            if not test.rejected:
                before.append(b)
                after.append(a)
        b, a = np.array(before).reshape(-1, 3), np.array(after).reshape(-1, 3)
        change = [
            f"{b[:, k].mean():.3f} -> {a[:, k].mean():.3f}" if len(b) else "-" for k in (1, 2)
        ]
        rows.append([f"{share:.1%}", f"{alarms}/{args.draws} ({alarms / args.draws:.1%})", *change])
    print_table(["NORMAL share", "rejected", "specificity (accepted)", "sensitivity"], rows)


if __name__ == "__main__":
    main()
