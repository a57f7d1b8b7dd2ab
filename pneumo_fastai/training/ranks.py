"""Which process of a run this is: read from the launcher's environment, no torch needed.

torchrun and `accelerate launch` set WORLD_SIZE, RANK and LOCAL_RANK in every process they start;
a plain `pneumo-fastai train` has none of them and is rank 0 of 1.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Number of training processes (1 unless started by torchrun or accelerate launch)."""
    return max(int(os.environ.get("WORLD_SIZE", 1)), 1)


def rank() -> int:
    """This process's rank among all training processes (0 on its own)."""
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's rank on its own machine: the GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    """Whether this process is one of several training processes."""
    return world_size() > 1


def is_main_process() -> bool:
    """Whether this process logs, exports and writes files for the run (rank 0)."""
    return rank() == 0
