"""fastai's DDP pieces, fixed for gloo/CPU and for our road: shards, gathered loss, the trainer.

With several processes, fastai's `DistributedTrainer` wraps the model in DDP and the loaders in
`DistributedDL`; `DistributedTraining` keeps that design and fixes what breaks for us: the index
broadcast is CUDA-only, the loaders are restored from a snapshot taken after our
balanced-sampling swap, the model is unwrapped with `.module` (leaving Accelerate's hooks and
`SyncBatchNorm` in the export), and batch means count the items padded onto the last shard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import AvgLoss, AvgMetric, Learner
from fastai.metrics import AccumMetric
from fastai.torch_core import apply
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .callbacks import GracefulStop


def collective_device() -> torch.device:
    """Where tensors handed to collectives must live: this GPU for nccl, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def padded_size(n: int, world: int) -> int:
    """`n` rounded up to a multiple of `world`: every rank gets as many items."""
    return math.ceil(n / world) * world


def shard(idxs: Sequence[int], rank: int, world: int, bs: int) -> list[int]:
    """Rank `rank`'s items of `idxs`, padded to a multiple of `world` by repeating from the start.

    Batch b of rank r is slice r of the b-th run of `world * bs` items, so gathering one batch
    from every rank gives the next items in order (fastai's `DistributedDL` gives each rank one
    contiguous slice, which returns gathered predictions out of dataset order).
    """
    idxs = list(idxs)
    n = len(idxs)
    if n == 0:
        return []
    n_padded = padded_size(n, world)
    padded = idxs + (idxs * (n_padded // n))[: n_padded - n]
    out: list[int] = []
    for start in range(0, n_padded, world * bs):
        k = min(bs, (n_padded - start) // world)  # the last run is shared out evenly
        out += padded[start + rank * k : start + (rank + 1) * k]
    return out


def real_count(gathered: int, seen: int, n: int, world: int) -> int:
    """How many leading items of a gathered batch of `gathered` are real, not padding.

    `seen`: items this rank has loaded so far, this batch included; `n`: items before padding.
    """
    first = (seen - gathered // world) * world  # position of the batch's first item
    return max(0, min(gathered, n - first))


class ShardedDL(DistributedDL):
    """fastai's `DistributedDL` with a CPU/gloo-safe broadcast and gathers in dataset order."""

    def _broadcast(self, t: list[int], rank: int) -> list[int]:
        x = torch.tensor(t, dtype=torch.long, device=collective_device())
        dist.broadcast(x, rank)
        return x.cpu().tolist()

    def __len__(self) -> int:
        per_rank = padded_size(self.dl.n, self.world_size) // self.world_size
        full, rest = divmod(per_rank, self.bs)
        return full + (1 if rest and not self.drop_last else 0)

    def get_idxs(self) -> list[int]:
        # the wrapped loader draws (a weighted sampler draws on every rank); rank 0's draw is used
        idxs = self._broadcast(list(self.dl.get_idxs()), 0)
        self.last_idxs = idxs  # this epoch's draw over all ranks, without padding
        self.n, self.n_padded = len(idxs), padded_size(len(idxs), self.world_size)
        self.shard_idxs = shard(idxs, self.rank, self.world_size, self.bs)
        return self.shard_idxs

    def to_detach(self, b, cpu: bool = True, gather: bool = True):
        b = self._to_detach(b, cpu, gather)
        if not gather or not hasattr(self, "n_padded"):
            return b

        def _real(t):
            return t if t.ndim == 0 else t[: real_count(len(t), self.i, self.n, self.world_size)]

        return apply(_real, b)


class GatheredLoss(AvgLoss):
    """Loss of all ranks' gathered, unpadded predictions (`AvgLoss` would count the padding)."""

    def reset(self) -> None:
        self.preds: list[torch.Tensor] = []
        self.targs: list[tuple[torch.Tensor, ...]] = []

    def accumulate(self, learn: Learner) -> None:
        self.loss_func = learn.loss_func
        self.preds.append(learn.to_detach(learn.pred, cpu=False))
        self.targs.append(tuple(learn.to_detach(y, cpu=False) for y in learn.yb))

    @property
    def value(self) -> torch.Tensor | None:
        if not self.preds:
            return None
        targs = (torch.cat(ys) for ys in zip(*self.targs, strict=True))
        return self.loss_func(torch.cat(self.preds), *targs).detach().cpu()


def exact_metric(metric: Any) -> Any:
    """An `AvgMetric` (a mean of batch means) as an `AccumMetric` over the gathered predictions."""
    if type(metric) is not AvgMetric:
        return metric
    return AccumMetric(metric.func, flatten=False, name=metric.name)


def batchnorm_modules(model: nn.Module) -> dict[str, _BatchNorm]:
    """The model's BatchNorm layers by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def restore_batchnorm(model: nn.Module, originals: dict[str, _BatchNorm]) -> nn.Module:
    """Put back the layers `convert_sync_batchnorm` replaced, with the values they reached."""
    for name, original in originals.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        synced = getattr(parent, child)
        if synced is original:
            continue
        original.load_state_dict(synced.state_dict())
        original.train(synced.training)
        setattr(parent, child, original)
    return model


class DistributedTraining(DistributedTrainer):
    """fastai's `DistributedTrainer` for our training road (see the module docstring)."""

    def __init__(
        self,
        sync_bn: bool,  # replace BatchNorm with `nn.SyncBatchNorm` during fit (CUDA only)
        cpu: bool,  # processes train on the CPU (gloo backend)
    ):
        # precision is ours (`--precision`, fastai's MixedPrecision), not Accelerate's config
        super().__init__(sync_bn=sync_bn, cpu=cpu, mixed_precision="no")

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else ShardedDL(dl, device=dl.device)

    def before_fit(self) -> None:
        self.batchnorms = batchnorm_modules(self.model) if self.sync_bn else {}
        super().before_fit()
        self.kept = self.learn.metrics, self.recorder.loss
        self.learn.metrics = [exact_metric(m) for m in self.learn.metrics]
        _set_recorder_loss(self.recorder, GatheredLoss())

    def after_batch(self) -> None:
        # a stop asked for on one rank (Ctrl-C, SIGTERM) ends fit on every rank at the same batch
        stoppers = [cb for cb in self.learn.cbs if isinstance(cb, GracefulStop)]
        if not stoppers:
            return
        asked = torch.tensor([any(s.requested for s in stoppers)], device=collective_device())
        dist.all_reduce(asked, op=dist.ReduceOp.MAX)
        if asked.item():
            for s in stoppers:
                s.request()

    def after_fit(self) -> None:
        # undo only our own wrapping, in place: a loader another callback put back stays put
        model = self.accelerator.unwrap_model(self.learn.model, keep_fp32_wrapper=False)
        self.learn.model = restore_batchnorm(model, self.batchnorms)
        self.learn.dls.loaders = [
            dl.dl if isinstance(dl, DistributedDL) else dl for dl in self.learn.dls.loaders
        ]
        self.learn.metrics = self.kept[0]
        _set_recorder_loss(self.recorder, self.kept[1])


def _set_recorder_loss(recorder: Callback, loss: AvgLoss) -> None:
    # `Callback.__setattr__` would warn that the recorder's `loss` shadows `learn.loss`
    object.__setattr__(recorder, "loss", loss)
