"""More than one process under torchrun: all ranks train, then only rank 0 goes on."""

from __future__ import annotations

import torch

from .loop import device_for_run, distributed


def init_distributed() -> None:
    """Join the process group when torchrun started several ranks (NCCL on GPUs, else gloo).

    On GPUs each rank first makes its own GPU (``LOCAL_RANK``) the current device, so NCCL
    calls that name no tensor (the final ``barrier``) never put two ranks on GPU 0."""
    _, world = distributed()
    if world > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            device = device_for_run()
            torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl", device_id=device)
        else:
            torch.distributed.init_process_group("gloo")


def finish_distributed() -> None:
    """After training only rank 0 exports, benchmarks and publishes."""
    rank, world = distributed()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        if rank != 0:
            raise SystemExit(0)
