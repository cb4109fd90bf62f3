"""Levels per module -> a Plan and the OBS weights that go with it.

A genome (the search's) or a uniform level (the baseline) picks one level for every
attention and every MLP block; this stitches the database's entries into what
:func:`darwin_modifier.format.shrink.shrink` takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.plan import LayerPlan, Plan


def assemble(
    store: DatabaseStore, attn_levels: Sequence[int], mlp_levels: Sequence[int]
) -> tuple[Plan, dict[tuple[int, str], torch.Tensor]]:
    """The plan and the o_proj / down_proj weight overrides for the given levels."""
    n = store.shape.num_layers
    if len(attn_levels) != n or len(mlp_levels) != n:
        raise ValueError(
            f"need one attention and one MLP level per layer ({n}), got "
            f"{len(attn_levels)} and {len(mlp_levels)}"
        )
    layers, overrides = [], {}
    for i, (a, m) in enumerate(zip(attn_levels, mlp_levels)):
        attn, mlp = store.entry(i, "attn", a), store.entry(i, "mlp", m)
        layers.append(LayerPlan(attn.kept, mlp.kept))
        if attn.weight is not None:
            overrides[(i, "o_proj")] = attn.weight
        if mlp.weight is not None:
            overrides[(i, "down_proj")] = mlp.weight
    return Plan(store.shape, layers), overrides
