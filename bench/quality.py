"""Recipe screen: candidate recipes, two seeds each, judged on a new site (half A of the official
test split), a patient-disjoint holdout and NIH.

    python bench/quality.py --data /path/holdout --out /path/quality --size 64 --epochs 12 \
        --seeds 42 1 --candidates default hist acquisition hist+acquisition size128

`--data` is a dataset whose `train/` the candidates train on (their own patient split inside it)
and whose `test/` is a patient-disjoint holdout none of them sees (`pneumo-fastai data holdout`).
Each run is `pneumo-fastai train --no-pretrained` in a fresh process (CPU minutes: user + system
of it and its loader workers); then its export, at fp32 (the precision its card is fitted on), is
scored on
- `--site` (`../shared/data/official_test_a`, half A of Kermany's official test split, by
  patient): ROC AUC with a 95 % patient-bootstrap interval, accuracy, NORMAL recall and PNEUMONIA
  recall at the card's threshold, NORMAL recall per acquisition batch, ECE; and the same with
  fastai's test-time augmentation (`tta`, n = 4, beta 0.25, seeded). Never trained, calibrated
  or thresholded on: it only scores;
- the holdout: ROC AUC, accuracy, specificity and sensitivity at the card's threshold, ECE, and
  NORMAL recall per acquisition batch (`NORMAL2-IM-*` and `IM-*` files);
- the shift proxy (`robustness.py`): the holdout under ten seeded corruptions, every figure
  weighed as the official test split mixes its images; mean and worst specificity;
- `--nih` (`../shared/data/external_nih`, adults from another hospital): ROC AUC, specificity
  and sensitivity at the card's threshold, ECE. Reported only: never trained, calibrated or
  thresholded on, and no recipe is chosen on it alone.
`--folds K` trains each candidate as a K-fold ensemble instead (`train --folds K`, rows named
`NAME xK folds`), to set an ensemble beside its single models. With `--exclude LIST.csv` (e.g.
`data audit`'s `label_issues.csv`), a candidate `NAME+exclude` is NAME trained without the
list's suspects (`train --exclude`).
Every finished run is kept in `--out/results.json`, so an interrupted screen resumes where it
stopped; `--rescore` scores the kept exports again (after a change to the scoring) and `--add
NAME=CARD` an export trained elsewhere (another commit, another command) as a row NAME; with
either, nothing is trained.
The table has one row per run and one per candidate (mean over its seeds).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import REPO, SHARED_DATA, machine_line, print_table
from PIL import Image
from robustness import LabelledSet, figures, normal_batch, score, test_mix

from pneumo_fastai import load_model
from pneumo_fastai.card import read_card
from pneumo_fastai.data.names import patient_id
from pneumo_fastai.figures.metrics import bootstrap_ci, expected_calibration_error

NIH = SHARED_DATA.parent / "external_nih"
SITE = SHARED_DATA.parent / "official_test_a"
# Each candidate's TrainConfig field values, spelled out in full so that a candidate means the
# same whatever today's defaults are; `epochs_x` multiplies --epochs. "baseline" is the recipe
# of pneumo-fastai 0.1.0; "default" is the recipe the 2026-12-01 screen chose ("intensity").
BASELINE = {
    "max_rotate": 10.0, "min_zoom": 1.0, "max_zoom": 1.1, "max_warp": 0.0, "crop_margin": 0.0,
    "max_lighting": 0.2, "gamma": 0.0, "blur": 0.0, "noise": 0.0, "min_scale": 1.0,
    "mixup": 0.0, "cutmix": 0.0, "progressive": 0.0, "equalize": "none",
}  # fmt: skip
SPATIAL = {"max_rotate": 15.0, "min_zoom": 0.9, "max_zoom": 1.25, "max_warp": 0.1}
INTENSITY = {"max_lighting": 0.3, "gamma": 0.4, "blur": 0.3, "noise": 0.03}
DEFAULT = {**BASELINE, **SPATIAL, "crop_margin": 0.06, **INTENSITY}
CROPS = {**DEFAULT, "min_scale": 0.3}
CANDIDATES: dict[str, dict[str, Any]] = {
    "baseline": BASELINE,
    "default": DEFAULT,
    "crops": CROPS,
    "long": {**DEFAULT, "epochs_x": 2},
    "crops+long": {**CROPS, "epochs_x": 2},
    "mixup": {**DEFAULT, "mixup": 0.4},
    "cutmix": {**DEFAULT, "cutmix": 1.0},
    "crops+mixup": {**CROPS, "mixup": 0.4},
    "crops+clahe": {**CROPS, "equalize": "clahe"},
    # the 2026-12-07 screen (issue 28): the global-statistics shortcut, and the input size
    "hist": {**DEFAULT, "equalize": "hist"},
    "acquisition": {**DEFAULT, "acquisition": 0.5},
    "hist+acquisition": {**DEFAULT, "equalize": "hist", "acquisition": 0.5},
    "size128": {**DEFAULT, "size": 128},
    # added to the same screen after its first scores: weight averaging, feature-style mixing
    "ema": {**DEFAULT, "ema": 0.998},
    "mixstyle": {**DEFAULT, "mixstyle": 0.5},
}
# Not part of a recipe: the screening runs skip the OOD fit (it changes no weight).
RUN_FLAGS = {"ood": False}


def flags(options: dict[str, Any]) -> list[str]:
    """Command-line flags of `pneumo-fastai train` for TrainConfig field values."""
    out = []
    for key, value in options.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else name.replace("--", "--no-", 1))
        else:
            out += [name, str(value)]
    return out


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def candidate_options(name: str, exclude: Path | None) -> dict[str, Any]:
    """TrainConfig values of a candidate; `NAME+exclude` is NAME without `exclude`'s suspects."""
    base = name.removesuffix("+exclude")
    options = dict(CANDIDATES[base])
    if base != name:
        options["exclude"] = exclude
    return options


def train_command(args: argparse.Namespace, name: str, seed: int, run_name: str) -> list[str]:
    """The `pneumo-fastai train` command of one screening run."""
    options = candidate_options(name, args.exclude)
    epochs = args.epochs * options.pop("epochs_x", 1)
    size = options.pop("size", args.size)
    ensemble = ["--folds", str(args.folds)] if args.folds else []
    return [
        sys.executable, "-m", "pneumo_fastai.cli", "train", "--data", str(args.data),
        "--no-pretrained", "--size", str(size), "--epochs", str(epochs),
        "--patience", str(epochs), "--seed", str(seed), "--exports", str(args.out / "exports"),
        "--name", run_name, "--no-progress", *flags({**RUN_FLAGS, **options}), *ensemble,
    ]  # fmt: skip


class Sets:
    """The labelled sets a run is scored on, decoded once per input size (as `predict` would)."""

    def __init__(self, holdout: Path, site: Path | None, nih: Path | None):
        self.folders = {"holdout": holdout, "site": site, "nih": nih}
        self._decoded: dict[tuple[str, int], LabelledSet] = {}

    def get(self, name: str, size: int) -> LabelledSet | None:
        """Set `name` decoded for a model of input `size`; None when it was not asked for."""
        folder = self.folders[name]
        if folder is None:
            return None
        if (name, size) not in self._decoded:
            self._decoded[name, size] = LabelledSet.of(folder, size)
        return self._decoded[name, size]


def site_figures(data: LabelledSet, p: np.ndarray, t: float) -> dict[str, Any]:
    """A new site's figures: AUC with its patient-bootstrap interval, recalls, ECE."""
    out = figures(data.y, p, t)
    out["normal_recall"], out["pneumonia_recall"] = out["specificity"], out["sensitivity"]
    groups = [patient_id(f) for f in data.files]
    low, high = bootstrap_ci(data.y, p, t, groups=groups, metrics=["roc_auc"])["roc_auc"]
    out["auc_low"], out["auc_high"] = low, high
    out["ece"] = expected_calibration_error(data.y, p)
    out["normal_recall_argmax"] = float(np.mean(p[data.y == 0] < 0.5))
    for batch in ("NORMAL2", "IM"):
        idx = [i for i, f in enumerate(data.files) if data.y[i] == 0 and normal_batch(f) == batch]
        out[f"normal_recall_{batch}"] = float(np.mean(p[idx] < t)) if idx else float("nan")
    return out


def evaluate(card: Path, sets: Sets) -> dict[str, Any]:
    """Site (plain and TTA), holdout, shift proxy and NIH figures of one export, at fp32."""
    model = load_model(card, precision="fp32")
    t, size = model.threshold, read_card(card).input.size

    def probs(images: list[Image.Image], tta: bool = False) -> np.ndarray:
        torch.manual_seed(0)  # fastai's TTA draws its augmentation from torch's generator
        return np.array([p.probability for p in model.predict_batch(images, bs=64, tta=tta)])

    out: dict[str, Any] = {}
    site = sets.get("site", size)
    if site is not None:
        out["site"] = site_figures(site, probs(site.images), t)
        out["site_tta"] = site_figures(site, probs(site.images, tta=True), t)
    holdout = sets.get("holdout", size)
    p = probs(holdout.images)
    out["holdout"] = figures(holdout.y, p, t)
    out["holdout"]["ece"] = expected_calibration_error(holdout.y, p)
    for batch in ("NORMAL2", "IM"):
        idx = [
            i for i, f in enumerate(holdout.files) if holdout.y[i] == 0 and normal_batch(f) == batch
        ]
        out["holdout"][f"normal_recall_{batch}"] = float(np.mean(p[idx] < t))
    w = test_mix(holdout.y, holdout.files)
    out["proxy"] = score(card, holdout.images, holdout.y, w, seed=0, bs=64, precision="fp32")
    nih = sets.get("nih", size)
    if nih is not None:
        q = probs(nih.images)
        out["nih"] = figures(nih.y, q, t) | {"ece": expected_calibration_error(nih.y, q)}
    return out


def row_name(args: argparse.Namespace, name: str) -> str:
    """A candidate's name in the results: NAME, or `NAME xK folds` for its ensemble."""
    return f"{name} x{args.folds} folds" if args.folds else name


def run_one(args: argparse.Namespace, name: str, seed: int, sets: Sets) -> dict[str, Any]:
    """Train candidate `name` with `seed` and score it; the results row."""
    run_name = f"{name}-s{seed}".replace("+", "_") + (f"-folds{args.folds}" if args.folds else "")
    cmd = train_command(args, name, seed, run_name)
    cpu, start = children_cpu(), time.perf_counter()
    with open(args.out / f"{run_name}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    card_path = args.out / "exports" / f"{run_name}.json"
    card = json.loads(card_path.read_text())
    members = card["training"].get("members", [card["training"]])
    return {
        "candidate": row_name(args, name), "seed": seed, "card": str(card_path),
        "command": cmd[1:], "wall_min": wall / 60, "cpu_min": cpu / 60,
        "best_epoch": [m["best_epoch"] for m in members],
        "valid_auc": card["validation"]["at_threshold"]["roc_auc"],
        "figures": evaluate(card_path, sets),
    }  # fmt: skip


COLUMNS = [
    ("A AUC", "site", "auc", 3), ("A AUC 95% CI", "site", ("auc_low", "auc_high"), 2),
    ("A acc @thr", "site", "accuracy", 3), ("A NORMAL rec", "site", "normal_recall", 3),
    ("A PNEU rec", "site", "pneumonia_recall", 3),
    ("A NORMAL2 rec", "site", "normal_recall_NORMAL2", 3),
    ("A IM rec", "site", "normal_recall_IM", 3), ("A ECE", "site", "ece", 3),
    ("A TTA AUC", "site_tta", "auc", 3), ("A TTA acc", "site_tta", "accuracy", 3),
    ("A TTA NORMAL rec", "site_tta", "normal_recall", 3),
    ("holdout AUC", "holdout", "auc", 4), ("hold spec", "holdout", "specificity", 3),
    ("hold sens", "holdout", "sensitivity", 3),
    ("NIH AUC", "nih", "auc", 3), ("NIH spec", "nih", "specificity", 3),
    ("NIH sens", "nih", "sensitivity", 3),
]  # fmt: skip


def _value(run: dict[str, Any], where: str | tuple[str, str], key: str) -> float:
    section = run["figures"]
    for part in (where,) if isinstance(where, str) else where:
        section = section.get(part, {})
    return section.get(key, float("nan"))


def _cell(group: list[dict[str, Any]], where: str, key: str | tuple[str, str], digits: int) -> str:
    """Mean over `group` of one figure, or of an interval's two ends ("low-high")."""
    keys = (key,) if isinstance(key, str) else key
    means = [np.mean([_value(g, where, k) for g in group]) for k in keys]
    return "-".join(f"{m:.{digits}f}" for m in means)


def table(results: list[dict[str, Any]], seeds: list[int]) -> None:
    """One row per run and one per candidate (mean over its seeds), in the order they ran."""
    rows = []
    for name in dict.fromkeys(r["candidate"] for r in results):
        runs = [r for r in results if r["candidate"] == name and r["seed"] in [*seeds, "-"]]
        for r in [*runs, None] if len(runs) > 1 else runs:
            group = runs if r is None else [r]
            cells = [_cell(group, where, key, digits) for _, where, key, digits in COLUMNS]
            cpu = f"{np.mean([g['cpu_min'] for g in group]):.0f}"
            rows.append([name, "mean" if r is None else r["seed"], *cells, cpu])
    print_table(["candidate", "seed", *(c[0] for c in COLUMNS), "CPU min"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dataset with train/ and test/")
    p.add_argument("--out", type=Path, required=True, help="folder for exports and results")
    p.add_argument("--nih", type=Path, default=NIH, help="external set (report only; '' skips)")
    p.add_argument("--site", type=Path, default=SITE, help="new site to score ('' skips)")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), help="NAME or NAME+exclude")
    p.add_argument("--folds", type=int, default=0, help="train each as a K-fold ensemble")
    p.add_argument("--exclude", type=Path, help="list for the NAME+exclude candidates")
    p.add_argument("--rescore", action="store_true", help="score the kept exports again")
    p.add_argument("--add", nargs="+", default=[], metavar="NAME=CARD",
                   help="score exports trained elsewhere as rows NAME")  # fmt: skip
    p.add_argument("--table", action="store_true", help="print the table of what is kept, only")
    args = p.parse_args()
    for name in args.candidates:
        if name.removesuffix("+exclude") not in CANDIDATES:
            p.error(f"unknown candidate {name}: choose from {', '.join(CANDIDATES)} (+exclude)")
        if name.endswith("+exclude") and args.exclude is None:
            p.error(f"{name} needs --exclude LIST.csv")
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    if not args.table:
        folder = lambda path: path if str(path) else None  # noqa: E731
        sets = Sets(args.data / "test", folder(args.site), folder(args.nih))
        if args.rescore:
            for r in results:
                r["figures"] = evaluate(Path(r["card"]), sets)
                results_path.write_text(json.dumps(results, indent=2))
        for name, card in (a.split("=", 1) for a in args.add):
            results.append({"candidate": name, "seed": "-", "card": card, "cpu_min": float("nan"),
                            "figures": evaluate(Path(card), sets)})  # fmt: skip
            results_path.write_text(json.dumps(results, indent=2))
        done = {(r["candidate"], r["seed"]) for r in results}
        todo = [] if args.rescore or args.add else args.seeds  # those two only score
        for seed in todo:  # every candidate's first seed before any second seed
            for name in args.candidates:
                if (row_name(args, name), seed) in done:
                    continue
                print(f"training {name}, seed {seed} ...", flush=True)
                results.append(run_one(args, name, seed, sets))
                results_path.write_text(json.dumps(results, indent=2))
    trained = [r for r in results if "command" in r]  # rows of --add name no command
    if trained:
        cmd = trained[0]["command"]
        size, epochs, data = (cmd[cmd.index(f) + 1] for f in ("--size", "--epochs", "--data"))
        print(f"{size} px (unless the name says), {epochs} epochs (x2: long), from scratch; "
              f"holdout {data}; A: {args.site}")  # fmt: skip
    table(results, args.seeds)


if __name__ == "__main__":
    main()
