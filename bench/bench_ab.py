"""Whole run, A/B: `pneumo-fastai train` against a plain PyTorch script doing the same epochs.

    python bench/bench_ab.py                       # 128 px, from scratch, 1 epoch, 2 rounds
    python bench/bench_ab.py --epochs 2 --repeats 3 --limit 400

Each round runs, in turn, as fresh processes (start-up included in both):
- ours: `python -m pneumo_fastai.cli train --no-pretrained --size S --epochs E` (dataset check,
  cache fill, fit with balanced sampling, early-stopping bookkeeping, threshold, export);
- plain: `python bench/plain_loop.py` on the same train/valid files (our seeded patient split,
  written to a JSON file), the way a PyTorch user would write the epoch (see that file).
It prints the median wall and CPU seconds (CPU: user + system of the process and its loader
workers) of each side, the median of the per-round ratios ours/plain, and where our run's time
went: imports (measured in a separate interpreter), then the card's `training.phases` (check,
setup: compute probe, loaders and cache fill, learner; fit), and the rest (threshold, export).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, SHARED_DATA, load_average, machine_line, median, print_table, spread

from pneumo_fastai.config import TrainConfig
from pneumo_fastai.data.layout import discover
from pneumo_fastai.data.names import label_of
from pneumo_fastai.data.split import SeededSplitter, limit_per_class


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
    config = TrainConfig(seed=seed)
    files = list(discover(data).files)
    if limit is not None:
        files = limit_per_class(files, limit, seed)
    train_idx, valid_idx = SeededSplitter(config.valid_pct, seed, config.split)(files)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, help="images per class (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of ours then plain")
    p.add_argument("--precision", default="auto", help="ours: auto, fp32 or bf16")
    p.add_argument("--plain-precision", default="fp32", help="plain loop: fp32 or bf16")
    args = p.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="pneumo-ab-") as tmp:
        split = Path(tmp) / "split.json"
        n_train, n_valid = write_split(args.data, args.limit, 42, split)
        print(f"{n_train} train / {n_valid} valid images, {args.size} px, {args.epochs} epoch(s)")
        ours_cmd = [
            sys.executable, "-m", "pneumo_fastai.cli", "train", "--data", str(args.data),
            "--no-pretrained", "--size", str(args.size), "--epochs", str(args.epochs),
            "--patience", str(args.epochs + 1), "--precision", args.precision,
            "--exports", tmp, "--name", "ab", "--no-progress",
            *(["--limit", str(args.limit)] if args.limit else []),
        ]  # fmt: skip
        plain_cmd = [
            sys.executable, str(REPO / "bench" / "plain_loop.py"), str(split),
            "--size", str(args.size), "--epochs", str(args.epochs),
            "--precision", args.plain_precision, "--out", str(Path(tmp) / "plain.pth"),
        ]  # fmt: skip
        runs: dict[str, list[tuple[float, float]]] = {"ours": [], "plain": []}
        phases: list[dict[str, float]] = []
        for _ in range(args.repeats):
            runs["ours"].append(timed(ours_cmd))
            card = json.loads((Path(tmp) / "ab.json").read_text())
            phases.append(card["training"]["phases"] | {"wall": runs["ours"][-1][0]})
            runs["plain"].append(timed(plain_cmd))
        imports = median([import_seconds() for _ in range(3)])
    wall_ratio = [o[0] / q[0] for o, q in zip(runs["ours"], runs["plain"], strict=True)]
    cpu_ratio = [o[1] / q[1] for o, q in zip(runs["ours"], runs["plain"], strict=True)]
    rows = [
        [name, f"{median([w for w, _ in r]):.1f}", spread([w for w, _ in r]),
         f"{median([c for _, c in r]):.1f}"]
        for name, r in runs.items()
    ]  # fmt: skip
    print_table(["side", "wall s (median)", "min-max", "CPU s (median)"], rows)
    print(
        f"ours/plain: wall {median(wall_ratio):.2f} (rounds {spread(wall_ratio)}), "
        f"CPU {median(cpu_ratio):.2f} (rounds {spread(cpu_ratio)})"
    )
    steps = ("check", "setup", "probe", "fit")
    breakdown = [["imports (fresh interpreter)", f"{imports:.1f}"]]
    breakdown += [[step, f"{median([ph[step] for ph in phases]):.1f}"] for step in steps]
    rest = median([ph["wall"] - imports - sum(ph[s] for s in steps) for ph in phases])
    breakdown.append(["rest: threshold, export, exit", f"{rest:.1f}"])
    print_table(["our run, step", "wall s (median)"], breakdown)
    print(f"load average {load_average()}")


if __name__ == "__main__":
    main()
