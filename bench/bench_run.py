"""Wall time of a complete `train` run with early stopping: epochs, best epoch, validation figures.

    python bench/bench_run.py                  # CPU-feasible: 64 px, 100 images/class, patience 4
    python bench/bench_run.py --full --device cuda   # the full default (224 px, patience 12), GPU

Runs `pneumo_fastai.train` once (early stopping on valid loss, save-best, balanced sampling,
export, threshold choice: everything `pneumo-fastai train` does) and prints what it took. The
default shrinks the data (`--limit` images per class), the input (`--size`) and the patience so
that a run ends within minutes on a 2-core CPU (about 25 s an epoch there under a load of 4-6);
`--full` means the reference configuration (224 px, every image, bs 32, up to 50 epochs,
patience 12). `--weights` takes torchvision's ResNet34 ImageNet file; without
it the torch hub cache is used when it holds that file, else a random stand-in (no download:
same speed, but validation figures are those of a random frozen body, not of ImageNet features).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: process wall time includes them

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from benchlib import SHARED_DATA, load_average, machine_line, random_resnet34_weights  # noqa: E402

from pneumo_fastai import TrainConfig, train  # noqa: E402
from pneumo_fastai.weights import hub_cache_file  # noqa: E402


def fmt(value: float | None) -> str:
    """Three decimals; 'n/a' where the card holds null (a metric undefined on this split)."""
    return "n/a" if value is None else f"{value:.3f}"


def parse_args() -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout X-rays")
    p.add_argument("--full", action="store_true", help="the reference configuration (see above)")
    p.add_argument("--size", type=int, default=64, help="input side (--full: 224)")
    p.add_argument("--limit", type=int, default=100, help="images per class (--full: all)")
    p.add_argument("--bs", type=int, default=d.bs, help="batch size")
    p.add_argument("--epochs", type=int, default=d.epochs, help="upper bound on epochs")
    p.add_argument("--patience", type=int, default=4, help="early-stopping patience (--full: 12)")
    p.add_argument("--weights", type=Path, help="torchvision ResNet34 ImageNet weights file")
    p.add_argument("--no-pretrained", action="store_true", help="random init, nothing frozen")
    p.add_argument("--num-workers", type=int, help="loader workers (default: cores - 1, at most 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--exports", type=Path, help="export folder (default: a temp folder)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    size, limit, patience = (
        (224, None, TrainConfig().patience) if args.full else (args.size, args.limit, args.patience)
    )
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-run-") as tmp:
        weights, weights_note = args.weights, "given"
        if not args.no_pretrained and weights is None:
            if hub_cache_file().is_file():
                weights, weights_note = hub_cache_file(), "ImageNet, torch hub cache"
            else:
                weights = random_resnet34_weights(Path(tmp))
                weights_note = "random stand-in (no ImageNet file here)"
        config = TrainConfig(
            data=args.data, exports=args.exports or Path(tmp) / "exports", size=size,
            limit=limit, bs=args.bs, epochs=args.epochs, patience=patience,
            pretrained=not args.no_pretrained, weights=None if args.no_pretrained else weights,
            num_workers=args.num_workers, device=args.device,
        )  # fmt: skip
        start = time.perf_counter()
        result = train(config, progress=False)
        train_s = time.perf_counter() - start
    card = result.card.model_dump()
    t, v = card["training"], card["validation"]["at_threshold"]
    data = card["data"]
    rows = [
        ("configuration", f"size {size}, limit {limit}, bs {args.bs}, epochs <= {args.epochs}, "
                          f"patience {patience}, pretrained {config.pretrained}"),
        ("weights", weights_note if config.pretrained else "none (random init)"),
        ("images", f"{data['n_train']} train, {data['n_valid']} valid "
                   f"({data['split_mode']} split)"),
        ("device", f"{t['device']}, {t['precision']}, channels-last {t['channels_last']}, "
                   f"{t['num_workers']} workers, cache {t['cached_in_ram']}"),
        ("wall s (process)", f"{time.perf_counter() - STARTED:.1f}"),
        ("wall s (train())", f"{train_s:.1f}"),
        ("fit s", f"{t['seconds']:.1f} ({t['seconds_per_epoch']:.2f} s/epoch)"),
        ("epochs run", f"{t['epochs_run']} (best {t['best_epoch']}, stopped early "
                       f"{t['stopped_early']})"),
        ("valid at threshold", f"threshold {fmt(card['decision_threshold']['value'])}: accuracy "
                               f"{fmt(v['accuracy'])}, sensitivity {fmt(v['sensitivity'])}, "
                               f"specificity {fmt(v['specificity'])}, ROC AUC {fmt(v['roc_auc'])}"),
        ("load average", load_average()),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
