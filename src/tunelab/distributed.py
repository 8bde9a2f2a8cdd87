"""One run over several processes (torchrun, `accelerate launch`, `tunelab train --nproc N`).

The Trainer does the data-parallel part (DDP, FSDP, DeepSpeed) once a process
group exists. What it cannot do is keep the run directory coherent: every
process would create its own, and every process would write run.json, the
model and the evaluation. These helpers let one process (rank 0) own the run
directory while all of them train.

The launcher's environment (WORLD_SIZE, RANK) says whether the run is
distributed; torchrun, `accelerate launch` and deepspeed all set it.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

T = TypeVar("T")


def world_size() -> int:
    """Processes in this run, as the launcher says (1 when started directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process owns the run directory (global rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def start() -> None:
    """Join the process group now, as the Trainer's arguments would later, so the ranks can agree on a run
    directory before any Trainer exists.

    `PartialState` picks the backend the Trainer will (gloo on CPU, nccl on CUDA, DeepSpeed's own under
    `accelerate launch` with a DeepSpeed config); the Trainer then reuses the initialised group.
    """
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def share_from_main(value: T) -> T:
    """Rank 0's `value` on every rank (any picklable value), so all ranks take the same branch."""
    if world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (a no-op in a single process)."""
    if world_size() > 1:
        torch.distributed.barrier()
