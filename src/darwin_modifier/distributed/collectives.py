"""The exchanges between ranks; each is the identity in a single process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from darwin_modifier.distributed.ranks import rank, world_size

T = TypeVar("T")


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def map_round_robin(fn: Callable[[T], float], items: Sequence[T]) -> list[float]:
    """``[fn(item) for item in items]`` with item ``i`` computed on rank
    ``i % world``; every rank gets every result (the same list everywhere)."""
    world, me = world_size(), rank()
    mine = {i: fn(item) for i, item in enumerate(items) if i % world == me}
    merged: dict[int, float] = {}
    for part in gather_objects(mine):
        merged.update(part)
    return [merged[i] for i in range(len(items))]


def reduce_weighted_mean(
    mean: torch.Tensor, count: int, owner: int
) -> tuple[torch.Tensor, int] | None:
    """The mean over all ranks' samples, on ``owner`` (``None`` elsewhere).

    Each rank holds the mean of its own ``count`` samples (LLM Compressor's running
    average Hessian); the pooled mean is Σ mean·count / Σ count, exactly what one
    process would have accumulated over all samples. ``mean`` is consumed (scaled in
    place: an n x n Hessian is not copied).
    """
    if world_size() == 1:
        return mean, count
    device = "cpu" if dist.get_backend() == "gloo" else mean.device
    weighted = mean.to(device).mul_(count)  # in place: the n x n matrix once
    total = torch.tensor([float(count)], dtype=torch.float64, device=device)
    dist.reduce(weighted, dst=owner)
    dist.reduce(total, dst=owner)
    if rank() != owner:
        return None
    pooled = int(total.item())
    return weighted.div_(max(pooled, 1)).to(mean.device), pooled
