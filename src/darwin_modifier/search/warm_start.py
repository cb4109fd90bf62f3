"""A training-free allocation from the database's own errors: the levels of least
summed OBS reconstruction error within the budget (a knapsack over levels, as ZipLM
and SPDY allocate per-layer sparsity).

Measured as a warm start for the search it loses to the near-uniform parent, so the
search does not use it: on SmolLM2 at half the decoder-block parameters (the demo's
database, 16 x 512 held-out tokens) uniform gave perplexity 47.1, this allocation on
relative errors (each block's error over its error when removed) 64.7 and on absolute
errors 979. ``benchmarks/quality.py`` keeps it as the one-shot ablation row
``obs_knapsack``.

The database already measured, for every block at every level, the layer-output error
its OBS update leaves (``loss`` in the manifest: ``tr(ΔW H ΔWᵀ)``). Errors of blocks in
different layers add up as perturbations of the same residual stream, so their sum is a
cheap, training-free estimate of a genome's damage. It is only an estimate: the
errors interact, and their scales differ across depth, which is why the search exists.

The knapsack is solved exactly on a grid of ``limit / grid`` cells: each block's cost is
rounded *up* to whole cells, so the genome it returns always holds the real limit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from darwin_modifier.search.budget import Budget
from darwin_modifier.search.genome import MODULES, Genome

ErrorTable = Mapping[str, Sequence[Sequence[float]]]
"""``errors[module][layer][level]``: the block's reconstruction error at that level."""


def database_errors(store) -> dict[str, list[list[float]]]:
    """The OBS reconstruction error of every block at every level, from the store."""
    return {
        module: [
            [float(level["loss"]) for level in store.layer_stats(i)[module]]
            for i in range(store.shape.num_layers)
        ]
        for module in MODULES
    }


def least_error_genome(
    budget: Budget, errors: ErrorTable, limit: int, grid: int = 4096
) -> Genome:
    """The genome of least summed error with ``budget.cost <= limit`` (canonical).

    ``grid`` cells span the limit; finer grids waste less of the budget to rounding
    (at most one cell per block) and cost ``O(blocks × levels × grid)``; a limit
    below ``grid`` is solved exactly.
    """
    n = budget.num_layers
    for module in MODULES:
        rows = errors.get(module, ())
        if [len(r) for r in rows] != [budget.num_levels(module, i) for i in range(n)]:
            raise ValueError(
                f"error table's {module} rows do not match the budget's levels"
            )
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    grid = min(grid, limit)  # integer costs below the grid: exact
    capacity = grid

    def steps(module: str, layer: int, level: int) -> int:  # cost in cells, rounded up
        return -(-budget.module_cost(module, layer, level) * grid // limit)

    blocks = [(m, i) for m in MODULES for i in range(n)]
    inf = float("inf")
    best = torch.full((capacity + 1,), inf, dtype=torch.float64)
    best[0] = 0.0
    choices = []  # per block: the level chosen for each used capacity
    for module, i in blocks:
        levels = sorted(
            {
                budget.canonical_level(module, i, lv)
                for lv in range(len(errors[module][i]))
            }
        )
        new = torch.full_like(best, inf)
        choice = torch.full((capacity + 1,), -1, dtype=torch.int64)
        for level in levels:
            size = steps(module, i, level)
            if size > capacity:
                continue
            shifted = torch.full_like(best, inf)
            shifted[size:] = best[: capacity + 1 - size] + errors[module][i][level]
            better = shifted < new
            new = torch.where(better, shifted, new)
            choice = torch.where(better, torch.tensor(level), choice)
        best = new
        choices.append(choice)
    if torch.isinf(best).all():
        raise ValueError(f"no genome of the database's levels fits the limit {limit}")
    used = capacity - int(torch.argmin(best.flip(0)))  # ties: the larger model
    levels = {m: [0] * n for m in MODULES}
    for (module, i), choice in zip(reversed(blocks), reversed(choices)):
        level = int(choice[used])
        levels[module][i] = level
        used -= steps(module, i, level)
    genome = Genome(**levels)
    if budget.is_empty(genome):
        raise ValueError(f"limit {limit} is too small: every block would go")
    return genome
