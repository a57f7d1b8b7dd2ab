"""A plain PyTorch/torchvision training script: the yardstick our pipeline is measured against.

    python bench/plain_loop.py split.json --size 128 --epochs 1 --out /tmp/plain.pth

It imports only torch, torchvision and PIL, and does what `pneumo-fastai train --no-pretrained`
does per epoch, the way a PyTorch user would write it: a `Dataset` that opens each file with PIL
and squashes it to `--size`, a `WeightedRandomSampler` for class balance, per-image
rotate/zoom/brightness-contrast (torchvision.transforms.v2, p=0.75 each) and ImageNet
normalisation, ResNet34 + our head (Dropout 0.5 -> 512->256 -> ReLU -> Dropout 0.25 -> 256->2),
AdamW with fastai's betas/eps/weight decay, `OneCycleLR`, label-smoothed cross-entropy, batch 32,
a validation pass each epoch, then `torch.save` of the weights. `split.json` lists the train and
valid files with their labels (written by `bench_ab.py`, from our own split), so both sides see
the same images. `--precision bf16` and `--channels-last` run it the fast way on CPUs with bf16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.models import resnet34
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PlainXrays(Dataset):
    """Files opened with PIL, squashed to `size`, as uint8 3 x size x size tensors."""

    def __init__(self, files: list[str], labels: list[int], size: int):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as img:
            rgb = img.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        return pil_to_tensor(rgb), self.labels[i]


class PlainAugment:
    """Per-image rotate/zoom and brightness/contrast of a uint8 batch, then ImageNet statistics."""

    def __init__(self, max_rotate: float = 10.0, max_zoom: float = 1.1, lighting: float = 0.2):
        affine = v2.RandomAffine(degrees=max_rotate, scale=(1.0, max_zoom))
        light = v2.ColorJitter(brightness=lighting, contrast=lighting)
        self.per_image = v2.Compose(
            [v2.RandomApply([affine], p=0.75), v2.RandomApply([light], p=0.75)]
        )
        self.normalize = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __call__(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        x = x.float().div_(255)
        if train:
            x = torch.stack([self.per_image(img) for img in x])
        return self.normalize(x)


def plain_model(hidden: int = 256, n_out: int = 2) -> nn.Sequential:
    """torchvision ResNet34 body (random init) + the head of our card."""
    body = nn.Sequential(*list(resnet34().children())[:-2])
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(512, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.25),
        nn.Linear(hidden, n_out),
    )
    return nn.Sequential(body, head)


def class_weights(labels: list[int]) -> torch.Tensor:
    """Per-sample weights 1/count(class)."""
    counts = torch.bincount(torch.tensor(labels)).double()
    return 1.0 / counts[torch.tensor(labels)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("split", type=Path, help='JSON: {"train": [[file, label], ...], "valid": ...}')
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, help="where to save the weights (default: none)")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    split = json.loads(args.split.read_text())
    train = PlainXrays(*map(list, zip(*split["train"], strict=True)), args.size)
    valid = PlainXrays(*map(list, zip(*split["valid"], strict=True)), args.size)
    sampler = WeightedRandomSampler(class_weights(train.labels), len(train), replacement=True)
    train_dl = DataLoader(train, args.bs, sampler=sampler, num_workers=args.workers)
    valid_dl = DataLoader(valid, args.bs * 2, num_workers=args.workers)
    model = plain_model()
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    opt = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=1e-2
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * len(train_dl), pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    augment = PlainAugment()
    amp = dict(device_type="cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for x, y in train_dl:
            x = augment(x).contiguous(memory_format=memory)
            with torch.autocast(**amp):
                loss = loss_fn(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        model.eval()
        correct = total = 0
        with torch.inference_mode(), torch.autocast(**amp):
            for x, y in valid_dl:
                pred = model(augment(x, train=False).contiguous(memory_format=memory)).argmax(1)
                correct += int((pred == y).sum())
                total += len(y)
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}: valid accuracy {correct / total:.3f} ({seconds:.1f} s)")
    if args.out is not None:
        torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
