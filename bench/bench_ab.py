"""Whole run, A/B: `pneumo-fastai train` against plain PyTorch loops and the bare-step limit.

    python bench/bench_ab.py                       # 128 px, from scratch, 1 epoch, 2 rounds
    python bench/bench_ab.py --epochs 12 --repeats 1 --sides ours   # a whole run vs its budget
    python bench/bench_ab.py --compile              # the limit with torch.compile as well

Each round runs, in turn, as fresh processes (start-up included in every side):
- ours: `python -m pneumo_fastai.cli train --no-pretrained --size S --epochs E` (dataset check,
  cache fill, fit with balanced sampling, early-stopping bookkeeping, calibration, threshold,
  OOD fit, export);
- plain fp32: `python bench/plain_loop.py` on the same train/valid files (our seeded patient
  split, written to a JSON file), the way a PyTorch user would write the epoch (see that file);
- plain bf16: the same script with bf16 autocast and channels-last, what a careful PyTorch user
  writes on a CPU with bf16 instructions (only on such a CPU);
- limit: `bench/bare_step.py`, the bare network's train-step and inference rates at the
  precision and memory format our run picks (and, with `--compile`, under torch.compile).
It prints each side's median wall and CPU seconds (CPU: user + system of the process and its
loader workers), the per-round ratios ours/plain and their medians, our steady-state epoch
against its hardware budget (the epoch's training images at the bare train-step rate plus its
validation images at the bare inference rate), the whole run against E such epochs, and where
our run's time went: imports (measured in a separate interpreter), then the card's
`training.phases`, and the rest (export).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, SHARED_DATA, load_average, machine_line, median, print_table, spread

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.names import label_of
from pneumo_fastai.data.select import select, training_split
from pneumo_fastai.device import cpu_has_bf16


def children_cpu() -> float:
    """User + system seconds of all finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of a command run to completion; its output goes to this process's."""
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - start, children_cpu() - cpu


def write_split(data: Path, limit: int | None, seed: int, out: Path) -> tuple[int, int]:
    """The files our `train` will use, split as it will split them, as plain_loop.py's JSON."""
    chosen = select(TrainConfig(data=data, seed=seed, limit=limit))
    files = chosen.files
    train_idx, valid_idx = training_split(chosen.config)(files)
    rows = {
        name: [[str(files[i]), int(label_of(files[i]) == "PNEUMONIA")] for i in idxs]
        for name, idxs in (("train", train_idx), ("valid", valid_idx))
    }
    out.write_text(json.dumps(rows))
    return len(train_idx), len(valid_idx)


def import_seconds() -> float:
    """Wall seconds of a fresh interpreter importing what `pneumo-fastai train` imports."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pneumo_fastai.training.train"], check=True)
    return time.perf_counter() - start


def timed_json(cmd: list[str]) -> dict:
    """The JSON line a command prints last (the bare-step figures)."""
    out = subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def epoch_seconds(history: Path) -> list[float]:
    """Per-epoch wall seconds from fastai's CSVLogger file (its `time` column, mm:ss)."""
    with open(history) as f:
        times = [row["time"] for row in csv.DictReader(f)]
    return [sum(int(part) * 60**i for i, part in enumerate(reversed(t.split(":")))) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, help="images per class (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of every side, in turn")
    p.add_argument("--precision", default="auto", help="ours: auto, fp32 or bf16")
    p.add_argument(
        "--sides", nargs="+", default=["ours", "plain-fp32", "plain-bf16"],
        choices=["ours", "plain-fp32", "plain-bf16"], help="which runs to time (the limit always)",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="also the limit under torch.compile")
    args = p.parse_args()
    print(machine_line())
    sides = [s for s in args.sides if s != "plain-bf16" or cpu_has_bf16()]
    with tempfile.TemporaryDirectory(prefix="pneumo-ab-") as tmp:
        split = Path(tmp) / "split.json"
        n_train, n_valid = write_split(args.data, args.limit, 42, split)
        print(f"{n_train} train / {n_valid} valid images, {args.size} px, {args.epochs} epoch(s)")
        cmds = {
            "ours": [
                sys.executable, "-m", "pneumo_fastai.cli", "train", "--data", str(args.data),
                "--no-pretrained", "--size", str(args.size), "--epochs", str(args.epochs),
                "--patience", str(args.epochs + 1), "--precision", args.precision,
                "--exports", tmp, "--name", "ab", "--no-progress",
                *(["--limit", str(args.limit)] if args.limit else []),
            ],
        }  # fmt: skip
        for precision in ("fp32", "bf16"):
            cmds[f"plain-{precision}"] = [
                sys.executable, str(REPO / "bench" / "plain_loop.py"), str(split),
                "--size", str(args.size), "--epochs", str(args.epochs),
                "--precision", precision, "--out", str(Path(tmp) / "plain.pth"),
                *(["--channels-last"] if precision == "bf16" else []),
            ]  # fmt: skip
        runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
        phases: list[dict[str, float]] = []
        epochs: list[float] = []
        plan: dict = {}
        for _ in range(args.repeats):
            for side in sides:
                runs[side].append(timed(cmds[side]))
                if side == "ours":
                    card = json.loads((Path(tmp) / "ab.json").read_text())
                    phases.append(card["training"]["phases"] | {"wall": runs[side][-1][0]})
                    seconds = epoch_seconds(Path(tmp) / "ab.history.csv")
                    epochs.append(median(seconds[1:] or seconds))
                    plan = card["training"]
        imports = median([import_seconds() for _ in range(3)])
        limits = {}
        precision = plan.get("precision", "bf16" if cpu_has_bf16() else "fp32")
        nhwc = plan.get("channels_last", precision == "bf16")
        bare = [
            sys.executable, str(REPO / "bench" / "bare_step.py"), "--size", str(args.size),
            "--precision", precision, *(["--channels-last"] if nhwc else []),
        ]  # fmt: skip
        for compiled in (False, True) if args.compile else (False,):
            limits[compiled] = timed_json(bare + (["--compile"] if compiled else []))
    rows = [
        [name, f"{median([w for w, _ in r]):.1f}", spread([w for w, _ in r]),
         f"{median([c for _, c in r]):.1f}"]
        for name, r in runs.items()
    ]  # fmt: skip
    print_table(["side", "wall s (median)", "min-max", "CPU s (median)"], rows)
    for other in [s for s in sides if s != "ours"] if "ours" in sides else []:
        wall = [o[0] / q[0] for o, q in zip(runs["ours"], runs[other], strict=True)]
        cpu = [o[1] / q[1] for o, q in zip(runs["ours"], runs[other], strict=True)]
        print(
            f"ours/{other}: wall {median(wall):.2f} (rounds {spread(wall)}), "
            f"CPU {median(cpu):.2f} (rounds {spread(cpu)})"
        )
    label = f"{precision}{', channels-last' if nhwc else ''}"
    for compiled, lim in limits.items():
        budget = n_train / lim["train_img_s"] + n_valid / lim["infer_img_s"]
        print(
            f"limit ({label}{', torch.compile' if compiled else ''}): train step "
            f"{lim['train_img_s']:.1f} img/s, inference {lim['infer_img_s']:.1f} img/s, first "
            f"steps {lim['train_first_steps_s']:.1f} s, first inference batch "
            f"{lim['infer_first_batch_s']:.1f} s; one epoch's budget {budget:.1f} s"
        )
    if True in limits:
        gain = limits[True]["train_img_s"] / limits[False]["train_img_s"]
        extra = limits[True]["train_first_steps_s"] - limits[False]["train_first_steps_s"]
        budget = n_train / limits[False]["train_img_s"]
        saved = budget * (1 - 1 / gain)
        payback = f"{extra / saved:.1f} epochs" if saved > 0 else "never"
        print(f"torch.compile: train step x{gain:.2f}, compile {extra:.0f} s, pays back: {payback}")
    if "ours" not in sides:
        return
    budget = n_train / limits[False]["train_img_s"] + n_valid / limits[False]["infer_img_s"]
    print(
        f"steady-state epoch: ours {median(epochs):.1f} s against a budget of {budget:.1f} s: "
        f"{median(epochs) / budget:.2f}x (rounds {spread([e / budget for e in epochs])})"
    )
    whole = median([w for w, _ in runs["ours"]])
    print(
        f"whole run: {whole:.1f} s against {args.epochs} x {budget:.1f} s = "
        f"{args.epochs * budget:.1f} s: {whole / (args.epochs * budget):.2f}x"
    )
    steps = ("check", "setup", "probe", "fit", "reference")
    breakdown = [["imports (fresh interpreter)", f"{imports:.1f}"]]
    breakdown += [[step, f"{median([ph.get(step, 0.0) for ph in phases]):.1f}"] for step in steps]
    rest = median([ph["wall"] - imports - sum(ph.get(s, 0.0) for s in steps) for ph in phases])
    breakdown.append(["rest: export, exit", f"{rest:.1f}"])
    print_table(["our run, step", "wall s (median)"], breakdown)
    print(f"load average {load_average()}")


if __name__ == "__main__":
    main()
