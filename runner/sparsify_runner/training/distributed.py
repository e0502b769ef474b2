"""More than one process under torchrun: all ranks train, then only rank 0 goes on."""

from __future__ import annotations

import torch

from .loop import distributed


def init_distributed() -> None:
    """Join the process group when torchrun started several ranks (NCCL on GPUs, else gloo)."""
    _, world = distributed()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def finish_distributed() -> None:
    """After training only rank 0 exports, benchmarks and publishes."""
    rank, world = distributed()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        if rank != 0:
            raise SystemExit(0)
