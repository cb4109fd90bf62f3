"""Who is who under torchrun; the process group for scripts and the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

# Ranks wait for each other at every exchange: for an owner's OBS of a 14B layer, or
# for the one candidate of a stage that does not divide evenly over the ranks (200K
# training tokens at the paper's last stage); the default 10 minutes can be too short.
TIMEOUT = timedelta(hours=2)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """The rank that writes shared files (manifest, search state, reports)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_rank_first() -> Iterator[None]:
    """The main rank runs the block first (it creates shared files: caches, the
    manifest); the other ranks run it after, and find them."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def init_from_env() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); True if one is
    active afterwards.

    NCCL with one GPU per local rank where CUDA is present, gloo on CPU. Not
    compressed-tensors' ``init_dist``: it needs an accelerator, and the CPU runs (CI,
    the tests) have none.
    """
    if dist.is_initialized():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dist.init_process_group(
            "nccl", device_id=torch.device("cuda", local_rank), timeout=TIMEOUT
        )
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return True


def require_process_group() -> None:
    """Refuse a torchrun launch whose script never joined the process group: each
    rank would silently run the whole job on all the data."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world_size() == 1:
        raise RuntimeError(
            f"started by torchrun with WORLD_SIZE={launched} but no process group is "
            "initialized, so every rank would run the whole job; call "
            "darwin_modifier.distributed.init_from_env() (or compressed-tensors' "
            "init_dist() on GPUs) before oneshot"
        )


def refuse_distributed(what: str, fix: str) -> None:
    """Refuse work that would only be duplicated on every rank."""
    if world_size() > 1:
        raise RuntimeError(
            f"{what} does not run under torch.distributed yet ({world_size()} "
            f"processes would each do the same work); {fix}"
        )
