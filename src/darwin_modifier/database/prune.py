"""One decoder layer's database entries: its two Hessians -> every level of both
modules.

Attention is pruned on the input columns of ``o_proj`` in units of the GQA mode
(:mod:`darwin_modifier.database.units`); the MLP unit is one channel of
``down_proj``.
"""

from __future__ import annotations

import torch

from darwin_modifier.database.obs import obs_prune_trajectory
from darwin_modifier.database.units import GQA_MODES, heads_per_unit
from darwin_modifier.plan import DenseShape, LayerPlan, Plan, attention_layout

__all__ = ["GQA_MODES", "heads_per_unit", "prune_layer"]


def prune_layer(
    o_weight: torch.Tensor,
    o_hessian: torch.Tensor,
    down_weight: torch.Tensor,
    down_hessian: torch.Tensor,
    shape: DenseShape,
    ladders: dict[str, list[int]],
    gqa_mode: str,
    damp: float = 0.01,
) -> tuple[dict[str, list], dict[str, list[dict]]]:
    """``(levels, stats)`` for :meth:`DatabaseStore.write_layer`.

    ``levels[module]`` lists ``(count, kept dense units, kept-column weight)`` per
    level; ``stats[module]`` lists ``{"count", "params", "loss"}`` per level (attention
    also ``physical_params``, which includes KV heads repeated for an even layout).
    """
    per_unit = heads_per_unit(shape, gqa_mode)
    dims = Plan.dense(shape)  # only for the parameter formulas
    levels: dict[str, list] = {"attn": [], "mlp": []}
    stats: dict[str, list[dict]] = {"attn": [], "mlp": []}

    attn = obs_prune_trajectory(
        o_weight, o_hessian, shape.head_dim * per_unit, ladders["attn"], damp
    )
    for count, level in zip(ladders["attn"], attn):
        heads = [u * per_unit + j for u in level.kept.tolist() for j in range(per_unit)]
        layer_plan = LayerPlan(heads, ())
        q_order, kv_order = attention_layout(layer_plan, shape)
        levels["attn"].append((count, heads, level.weight))
        stats["attn"].append(
            {
                "count": count,
                # The budget counts each kept KV head once (the paper's count, and
                # monotone in the level); KV heads repeated to regularise unbalanced
                # groups ("query" mode) are the physical cost, reported beside it.
                "params": dims.attention_params(
                    len(heads), len(layer_plan.kv_heads(shape))
                ),
                "physical_params": dims.attention_params(len(q_order), len(kv_order)),
                "loss": level.loss,
            }
        )

    mlp = obs_prune_trajectory(down_weight, down_hessian, 1, ladders["mlp"], damp)
    for count, level in zip(ladders["mlp"], mlp):
        levels["mlp"].append((count, level.kept.tolist(), level.weight))
        stats["mlp"].append(
            {"count": count, "params": dims.mlp_params(count), "loss": level.loss}
        )
    return levels, stats
