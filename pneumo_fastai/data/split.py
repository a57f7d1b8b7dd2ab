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
from .names import label_fn, label_of, patient_id


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


def _patient_groups(
    labels: Sequence[str], groups: Sequence[str]
) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Each group's items, and the groups of each class (by the group's majority label), sorted."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[str, list[str]] = defaultdict(list)
    for g in sorted(members):
        by_class[Counter(labels[i] for i in members[g]).most_common(1)[0][0]].append(g)
    return members, dict(sorted(by_class.items()))


def patient_split(
    labels: Sequence[str], groups: Sequence[str], valid_pct: float, seed: int
) -> tuple[list[int], list[int]]:
    """Patient-grouped split, stratified by class: each group lands wholly on one side."""
    members, by_class = _patient_groups(labels, groups)
    rng = np.random.RandomState(seed)
    valid: list[int] = []
    for cls_groups in by_class.values():
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


def patient_folds(
    labels: Sequence[str], groups: Sequence[str], k: int, seed: int
) -> list[list[int]]:
    """`k` patient-disjoint folds, stratified by class, covering every item exactly once.

    Within each class, groups are drawn in a seeded order and each goes to the fold that holds
    the fewest images of that class so far, so folds come out within one patient of equal.
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    members, by_class = _patient_groups(labels, groups)
    if len(members) < k:
        raise ValueError(f"{len(members)} patients cannot fill {k} folds")
    rng = np.random.RandomState(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls_groups in by_class.values():
        sizes = [0] * k
        for j in rng.permutation(len(cls_groups)):
            idxs = members[cls_groups[j]]
            f = min(range(k), key=lambda i: (sizes[i], i))
            folds[f] += idxs
            sizes[f] += len(idxs)
    return [sorted(f) for f in folds]


class SeededSplitter:
    """Picklable fastai splitter: `patient` (grouped, stratified) or `image` (reference) mode.

    With `folds` >= 2 the validation items are patient fold `fold` of `folds` (an ensemble
    member's split) instead of a `valid_pct` share.
    """

    def __init__(
        self,
        valid_pct: float = 0.3,
        seed: int = 42,
        mode: SplitMode = "patient",
        folds: int = 0,  # >= 2: validate on one of this many patient folds
        fold: int = 0,  # which fold validates
        task: str = "binary",  # stratify on the task's classes (subtype: from file names)
    ):
        self.valid_pct, self.seed, self.mode = valid_pct, seed, mode
        self.folds, self.fold, self.task = folds, fold, task

    def __call__(self, items: Sequence[Path]) -> tuple[list[int], list[int]]:
        labels = [label_fn(getattr(self, "task", "binary"))(p) for p in items]
        groups = [patient_id(p) for p in items]
        if getattr(self, "folds", 0) >= 2:
            valid = patient_folds(labels, groups, self.folds, self.seed)[self.fold]
            chosen = set(valid)
            return [i for i in range(len(items)) if i not in chosen], valid
        if self.mode == "image":
            return image_split(len(items), self.valid_pct, self.seed)
        return patient_split(labels, groups, self.valid_pct, self.seed)
