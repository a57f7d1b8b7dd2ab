"""Seeded train/valid splits: patient-grouped and stratified (default), or the reference split.

    from pneumo_fastai.data.split import SeededSplitter
    train_idx, valid_idx = SeededSplitter(valid_pct=0.3, seed=42, mode="patient")(files)

Same seed, same split on any machine. `SeededSplitter` is what the fastai `DataBlock` calls; it is
pickled into exports, so it stays a plain module-level class.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import SplitMode
from .names import label_of, patient_id


def limit_per_class(files: Sequence[Path], limit: int, seed: int) -> list[Path]:
    """A seeded sample of at most `limit` files per class, in the original order."""
    rng = np.random.RandomState(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(files):
        by_class[label_of(f)].append(i)
    keep: set[int] = set()
    for idxs in by_class.values():
        keep.update(int(i) for i in rng.permutation(idxs)[:limit])
    return [f for i, f in enumerate(files) if i in keep]


def image_split(n: int, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """Reference split: a seeded permutation of all items, the first (1 - valid_pct) train."""
    perm = np.random.RandomState(seed).permutation(n)
    cut = int(n * (1 - valid_pct))
    return sorted(perm[:cut].tolist()), sorted(perm[cut:].tolist())


def patient_split(
    labels: Sequence[str], groups: Sequence[str], valid_pct: float, seed: int
) -> tuple[list[int], list[int]]:
    """Patient-grouped split, stratified by class: each group lands wholly on one side."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    group_label = {
        g: Counter(labels[i] for i in idxs).most_common(1)[0][0] for g, idxs in members.items()
    }
    rng = np.random.RandomState(seed)
    valid: list[int] = []
    for cls in sorted(set(labels)):
        cls_groups = sorted(g for g, lab in group_label.items() if lab == cls)
        target = valid_pct * sum(len(members[g]) for g in cls_groups)
        taken = 0
        for j in rng.permutation(len(cls_groups)):
            if taken >= target:
                break
            idxs = members[cls_groups[j]]
            valid += idxs
            taken += len(idxs)
    valid_set = set(valid)
    return [i for i in range(len(labels)) if i not in valid_set], sorted(valid)


class SeededSplitter:
    """Picklable fastai splitter: `patient` (grouped, stratified) or `image` (reference) mode."""

    def __init__(self, valid_pct: float = 0.3, seed: int = 42, mode: SplitMode = "patient"):
        self.valid_pct, self.seed, self.mode = valid_pct, seed, mode

    def __call__(self, items: Sequence[Path]) -> tuple[list[int], list[int]]:
        if self.mode == "image":
            return image_split(len(items), self.valid_pct, self.seed)
        labels = [label_of(p) for p in items]
        groups = [patient_id(p) for p in items]
        return patient_split(labels, groups, self.valid_pct, self.seed)
