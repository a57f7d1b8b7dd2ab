"""Several processes, one model: DDP training through Accelerate and fastai.distributed.

pneumo-fastai train --gpus 2 --data DATA                              # this machine's GPUs
accelerate launch -m pneumo_fastai.cli train --data DATA              # an Accelerate config
torchrun --nproc_per_node 2 -m pneumo_fastai.cli train --data DATA    # also on CPU (gloo)

`train` calls `distributed_run` around `fit`; with one process it is a temporary folder and
nothing else. With several, fastai's `DistributedTrainer` wraps the model in DDP and the loaders
in `DistributedDL`; `DistributedTraining` below keeps that design and fixes what breaks for us:
the index broadcast is CUDA-only, the loaders are restored from a snapshot taken after our
balanced-sampling swap, the model is unwrapped with `.module` (leaving Accelerate's hooks and
`SyncBatchNorm` in the export), and batch means count the items padded onto the last shard.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import AvgLoss, AvgMetric, Learner
from fastai.metrics import AccumMetric
from fastai.torch_core import apply, distrib_barrier, num_distrib, rank_distrib
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .callbacks import GracefulStop
from .errors import PneumoError


def world_size() -> int:
    """Number of training processes (1 unless started by torchrun or accelerate launch)."""
    return max(num_distrib(), 1)


def rank() -> int:
    """This process's rank among all training processes (0 on its own)."""
    return rank_distrib()


def local_rank() -> int:
    """This process's rank on its own machine: the GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    """Whether this process is one of several training processes."""
    return world_size() > 1


def is_main_process() -> bool:
    """Whether this process logs, exports and writes files for the run (rank 0)."""
    return rank() == 0


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


def resolve_sync_bn(requested: bool | None, device: torch.device) -> bool:
    """`None` means on with CUDA GPUs and off on CPU, where torch's SyncBatchNorm cannot run."""
    if requested is None:
        return device.type == "cuda"
    if requested and device.type != "cuda":
        raise PneumoError(
            "--sync-bn needs CUDA GPUs: torch's SyncBatchNorm does not run on the CPU. "
            "Use --no-sync-bn (the default on CPU); each process then normalises its own batch."
        )
    return requested


def process_device(device: torch.device) -> torch.device:
    """The device of this process: with several processes on CUDA, the GPU of its local rank."""
    if not is_distributed() or device.type != "cuda":
        return device
    if device.index is not None:
        raise PneumoError(
            f"--device {device} picks one GPU, but each of the {world_size()} processes takes "
            "its own; use --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES."
        )
    if local_rank() >= torch.cuda.device_count():
        raise PneumoError(
            f"Process {local_rank()} on this machine has no GPU ({torch.cuda.device_count()} "
            "visible); start at most one process per GPU."
        )
    torch.cuda.set_device(local_rank())
    return torch.device("cuda", local_rank())


@dataclass
class DistributedRun:
    """What one training process knows about the run it is part of."""

    world_size: int  # number of processes
    rank: int  # this process
    work: Path  # folder for the best epoch's weights and the history, the same for every rank
    backend: str | None = None  # gloo or nccl; None with one process
    sync_bn: bool = False  # whether BatchNorm statistics are synchronised across processes
    callbacks: list[Callback] = field(default_factory=list)  # to add to `fit`

    @property
    def is_main(self) -> bool:
        """Whether this process logs and exports."""
        return self.rank == 0

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a synchronisation point)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def summary(self, bs: int) -> dict[str, Any]:
        """The card's record of the run's processes; `bs` is the per-process batch size."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "bs_per_process": bs,
            "effective_bs": bs * self.world_size,
            "sync_bn": self.sync_bn,
        }


def _shared_folder(exports: Path) -> Path:
    """A fresh folder under `exports`, made by rank 0 and checked to be visible to every rank."""
    made: list[Any] = [None]
    if is_main_process():
        try:
            exports.mkdir(parents=True, exist_ok=True)
            made = [tempfile.mkdtemp(prefix=".pneumo-train-", dir=exports)]
        except OSError as e:
            made = [e]
    dist.broadcast_object_list(made, src=0)
    if isinstance(made[0], OSError):
        raise PneumoError(f"Cannot create a work folder in {exports}: {made[0]}.")
    work = Path(made[0])
    seen = torch.tensor([int(work.is_dir())], device=collective_device())
    dist.all_reduce(seen, op=dist.ReduceOp.MIN)
    if not seen.item():
        if is_main_process():
            shutil.rmtree(work, ignore_errors=True)
        raise PneumoError(
            f"{exports.resolve()} is not the same folder for every process: the best epoch's "
            "weights are read back from it by all of them. On several machines, pass --exports "
            "on a filesystem they share."
        )
    return work


@contextlib.contextmanager
def distributed_run(
    exports: Path,  # export folder; several processes share a work folder inside it
    device: torch.device,  # this process's device (see `process_device`)
    sync_bn: bool | None = None,  # None: on with CUDA, off on CPU
) -> Iterator[DistributedRun]:
    """The processes' view of a run around `fit`: joins the process group when there are several."""
    if not is_distributed():
        with tempfile.TemporaryDirectory(prefix="pneumo-train-") as work:
            yield DistributedRun(world_size=1, rank=0, work=Path(work))
        return
    sync = resolve_sync_bn(sync_bn, device)
    trainer = DistributedTraining(sync_bn=sync, cpu=device.type != "cuda")  # joins the group
    work = _shared_folder(Path(exports))
    run = DistributedRun(
        world_size=world_size(),
        rank=rank(),
        work=work,
        backend=str(dist.get_backend()),
        sync_bn=sync,
        callbacks=[trainer],
    )
    quiet = contextlib.nullcontext() if run.is_main else _stdout_to_devnull()
    try:
        with quiet:
            yield run
        distrib_barrier()  # every rank is done with the work folder
    finally:
        if run.is_main:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


ACCELERATE_LAUNCH = ("-m", "accelerate.commands.launch")


def strip_option(args: Sequence[str], option: str) -> list[str]:
    """`args` without `option VALUE` or `option=VALUE`."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(f"{option}="):
            out.append(a)
    return out


def gpus_launch_command(n: int, args: Sequence[str]) -> list[str]:
    """The `accelerate launch` command that runs `pneumo-fastai ARGS` (minus `--gpus`) on n GPUs."""
    return [
        sys.executable, *ACCELERATE_LAUNCH,
        "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
        "--main_process_port", "0",  # a free port: two runs on one machine do not collide
        "--mixed_precision", "no",  # precision is `--precision`, applied by fastai in each process
        "--dynamo_backend", "no",
        "-m", "pneumo_fastai.cli", *strip_option(args, "--gpus"),
    ]  # fmt: skip


def check_gpus(n: int, device: str) -> None:
    """Refuse `--gpus n` where it cannot work: under a launcher, on CPU, or with too few GPUs."""
    if n < 1:
        raise PneumoError(f"--gpus must be at least 1, got {n}.")
    if is_distributed():
        raise PneumoError(
            "--gpus starts its own processes; leave it out under accelerate launch or torchrun."
        )
    if device not in ("auto", "cuda"):
        raise PneumoError(
            f"--gpus trains on CUDA GPUs; it cannot be combined with --device {device}."
        )
    visible = torch.cuda.device_count()
    if visible < n:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        raise PneumoError(
            f"--gpus {n} asks for {n} CUDA GPU(s), but this machine shows {visible}{where}. "
            "Use fewer, or drop --gpus to train in one process (CPU works too)."
        )


def launch_on_gpus(n: int, args: Sequence[str]) -> int:
    """Run `pneumo-fastai ARGS` as n processes, one per GPU, through Accelerate; its exit status."""
    return subprocess.call(gpus_launch_command(n, args))
