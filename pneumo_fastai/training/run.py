"""The processes' view of one training run: a work folder, rank 0's results shared with all.

pneumo-fastai train --gpus 2 --data DATA                              # this machine's GPUs
accelerate launch -m pneumo_fastai.cli train --data DATA              # an Accelerate config
torchrun --nproc_per_node 2 -m pneumo_fastai.cli train --data DATA    # also on CPU (gloo)

`train` calls `distributed_run` around `fit`; with one process it is a temporary folder and
nothing else. With several, it joins the process group through `DistributedTraining` (see
`ddp.py`) and makes a work folder that every process can see.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.torch_core import distrib_barrier

from ..errors import PneumoError
from .ddp import DistributedTraining, collective_device
from .ranks import is_distributed, is_main_process, local_rank, rank, world_size


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
