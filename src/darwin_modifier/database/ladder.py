"""Which widths of a prunable module become database levels.

A ladder lists the kept group count (heads, KV groups or MLP channels) for levels
``0 … L-1``: level 0 is the dense module, the last level removes it entirely. The
search's genome is one level index per module and its mutation moves levels by ±1, so
every module gets a ladder of the *same length*; when a module has fewer distinct widths
than levels (9 heads, 11 levels) neighbouring levels repeat a count instead of the
ladder getting shorter. Ladders are therefore non-increasing, not strictly decreasing,
and with repeats a level step no longer moves a fixed number of parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from darwin_modifier.database.obs import as_int as _as_int

__all__ = [
    "MLP_CHANNEL_MULTIPLE",
    "NUM_LEVELS",
    "custom_ladder",
    "parameter_ladder",
]

NUM_LEVELS = 11  # the paper's levels 0 … 10
MLP_CHANNEL_MULTIPLE = 32  # MLP widths in whole tiles of 32 channels, as the authors do


def parameter_ladder(
    total_groups: int, num_levels: int = NUM_LEVELS, multiple: int = 1
) -> list[int]:
    """Kept group counts evenly spaced in parameters (which are linear in groups).

    Level ``i`` keeps ``total · (1 - i / (num_levels - 1))`` groups rounded to the
    nearest multiple of ``multiple`` (halves round up), clamped to ``[0, total]``. The
    first entry is always ``total`` (even when it is not a multiple) and the last always
    0. Rounding can make neighbours equal; they are kept, so the length is always
    ``num_levels``.
    """
    total = _as_int(total_groups, "total_groups")
    levels = _as_int(num_levels, "num_levels")
    mult = _as_int(multiple, "multiple")
    if total < 1:
        raise ValueError(f"total_groups must be at least 1, got {total}")
    if levels < 2:
        raise ValueError(
            f"num_levels must be at least 2 (dense, removed), got {levels}"
        )
    if mult < 1:
        raise ValueError(f"multiple must be at least 1, got {mult}")
    if mult > total:
        raise ValueError(
            f"multiple={mult} (mlp_multiple) exceeds the {total} units of the module: "
            "no width between dense "
            "and removed could be a multiple of it"
        )
    steps = levels - 1
    ladder = [total]
    for i in range(1, steps):
        # Integer arithmetic: nearest multiple of `mult` to total * (steps - i) / steps.
        units = (2 * total * (steps - i) + mult * steps) // (2 * mult * steps)
        ladder.append(min(units * mult, total))
    ladder.append(0)
    return ladder


def custom_ladder(counts: Sequence[int], total_groups: int) -> list[int]:
    """Check a user-given ladder: starts at ``total_groups``, ends at 0, non-increasing.

    Used e.g. for runtime-spaced levels (the authors' Llama-2 setup) instead of
    parameter-spaced ones. Returns the ladder as plain ints.
    """
    total = _as_int(total_groups, "total_groups")
    if total < 1:
        raise ValueError(f"total_groups must be at least 1, got {total}")
    ladder = [_as_int(c, f"ladder entry {i}") for i, c in enumerate(counts)]
    if len(ladder) < 2:
        raise ValueError(f"a ladder needs at least 2 levels, got {len(ladder)}")
    if ladder[0] != total:
        raise ValueError(f"level 0 must be dense ({total} groups), got {ladder[0]}")
    if ladder[-1] != 0:
        raise ValueError(f"the last level must remove the module (0), got {ladder[-1]}")
    for i, (a, b) in enumerate(pairwise(ladder)):
        if b > a:
            raise ValueError(
                f"ladder must be non-increasing: level {i + 1} keeps {b} > {a} "
                f"at level {i}"
            )
    return ladder
