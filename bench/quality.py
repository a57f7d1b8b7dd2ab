"""Recipe benchmark: candidate recipes, same budget, scored on a holdout and on the shift proxy.

    python bench/quality.py --data /path/holdout/chest_xray --out /path/quality \
        --size 96 --epochs 8 --seeds 42 1 --candidates baseline spatial intensity

`--data` is a dataset whose `train/` the candidates train on (their own patient split inside it)
and whose `test/` is a patient-disjoint holdout none of them sees (`pneumo-fastai data holdout`).
Each run is `pneumo-fastai train --no-pretrained` in a fresh process (its CPU minutes: user +
system of it and its loader workers), then the export is scored by `robustness.score`: ROC AUC
and accuracy at the card's threshold on the clean holdout and the mean over the corruptions.
Every finished run is kept in `--out/results.json`, so an interrupted benchmark resumes where it
stopped; the table at the end has one row per run and one per candidate (mean over seeds).
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
from benchlib import REPO, machine_line, print_table
from robustness import NORMAL_SHARE, normal_share_subset, score

from pneumo_fastai.data.images import load_xray
from pneumo_fastai.data.layout import list_split
from pneumo_fastai.data.names import label_of, patient_id

# Each candidate's TrainConfig field values, spelled out in full so that a candidate means the
# same whatever today's defaults are. "baseline" is the recipe of pneumo-fastai 0.1.0;
# "intensity" won the 2026-12-01 screening and is today's default.
BASELINE = {
    "max_rotate": 10.0, "min_zoom": 1.0, "max_zoom": 1.1, "max_warp": 0.0, "crop_margin": 0.0,
    "max_lighting": 0.2, "gamma": 0.0, "blur": 0.0, "noise": 0.0,
    "mixup": 0.0, "progressive": 0.0, "equalize": "none",
}  # fmt: skip
SPATIAL = {"max_rotate": 15.0, "min_zoom": 0.9, "max_zoom": 1.25, "max_warp": 0.1}
INTENSITY = {"max_lighting": 0.3, "gamma": 0.4, "blur": 0.3, "noise": 0.03}
STRONG = {**BASELINE, **SPATIAL, "crop_margin": 0.06, **INTENSITY}
CANDIDATES: dict[str, dict[str, Any]] = {
    "baseline": BASELINE,
    "spatial+margin": {**BASELINE, **SPATIAL, "crop_margin": 0.06},
    "intensity": STRONG,
    "intensity+clahe": {**STRONG, "equalize": "clahe"},
    "intensity+mixup": {**STRONG, "mixup": 0.4},
    "intensity+progressive": {**STRONG, "progressive": 0.5},
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


def run_one(args: argparse.Namespace, name: str, seed: int, holdout) -> dict[str, Any]:
    """Train candidate `name` with `seed` and score it; the results row."""
    exports = args.out / "exports"
    run_name = f"{name}-s{seed}".replace("+", "_")
    cmd = [
        sys.executable, "-m", "pneumo_fastai.cli", "train", "--data", str(args.data),
        "--no-pretrained", "--size", str(args.size), "--epochs", str(args.epochs),
        "--patience", str(args.epochs), "--seed", str(seed), "--exports", str(exports),
        "--name", run_name, "--no-progress", *flags({**RUN_FLAGS, **CANDIDATES[name]}),
    ]  # fmt: skip
    cpu, start = children_cpu(), time.perf_counter()
    with open(args.out / f"{run_name}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    card_path = exports / f"{run_name}.json"
    card = json.loads(card_path.read_text())
    figures = score(card_path, *holdout, seed=0, bs=64, precision="fp32")
    return {
        "candidate": name, "seed": seed, "card": str(card_path), "wall_min": wall / 60,
        "cpu_min": cpu / 60, "best_epoch": card["training"]["best_epoch"],
        "valid_auc": card["validation"]["at_threshold"]["roc_auc"],
        "temperature": card["calibration"]["temperature"], "figures": figures,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dataset with train/ and test/")
    p.add_argument("--out", type=Path, required=True, help="folder for exports and results")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1])
    p.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["candidate"], r["seed"]) for r in results}
    files = list_split(args.data / "test").all_images()
    y = np.array([int(label_of(f) == "PNEUMONIA") for f in files])
    subset = normal_share_subset(y, [patient_id(f) for f in files], NORMAL_SHARE, 0)
    holdout = ([load_xray(f) for f in files], y, subset)
    for name in args.candidates:
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            print(f"training {name}, seed {seed} ...", flush=True)
            results.append(run_one(args, name, seed, holdout))
            results_path.write_text(json.dumps(results, indent=2))
    rows = []
    for name in args.candidates:
        runs = [r for r in results if r["candidate"] == name and r["seed"] in args.seeds]
        for r in [*runs, None]:
            group = runs if r is None else [r]
            if not group:
                continue
            clean = [g["figures"]["clean"] for g in group]
            shift = [g["figures"]["mean of the shifts"] for g in group]
            rows.append([
                name, "mean" if r is None else r["seed"],
                f"{np.mean([c['auc'] for c in clean]):.4f}",
                f"{np.mean([c['accuracy'] for c in clean]):.3f}",
                f"{np.mean([c['specificity'] for c in clean]):.3f}",
                f"{np.mean([s['auc'] for s in shift]):.4f}",
                f"{np.mean([s['accuracy'] for s in shift]):.3f}",
                f"{np.mean([s['specificity'] for s in shift]):.3f}",
                f"{np.mean([g['cpu_min'] for g in group]):.0f}",
            ])  # fmt: skip
    print(f"{args.size} px, {args.epochs} epochs, from scratch; holdout {args.data / 'test'}")
    print_table(
        ["candidate", "seed", "holdout AUC", "acc @thr", "spec @thr", "shift AUC",
         "shift acc", "shift spec", "CPU min"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
