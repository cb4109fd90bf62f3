"""One decoder layer's database entries: its two Hessians -> every level of both
modules.

Attention is pruned on the input columns of ``o_proj``; the unit depends on the GQA
mode:

- ``"kv_group"`` (default, regular): a whole KV group (its query heads and the KV head)
  is one unit, so the shrunk layer is plain GQA with no KV repeat. On SmolLM2 this spent
  the budget about twice as well as query-only removal (../shared/method.md §2).
- ``"query"`` (the paper's GQA behaviour): single query heads; every KV head that still
  serves a query stays, and the format repeats KV heads where groups end up unbalanced.
On MHA models both modes are the same. The MLP unit is one channel of ``down_proj``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from darwin_modifier.database.ladder import custom_ladder, parameter_ladder
from darwin_modifier.database.obs import obs_prune_trajectory
from darwin_modifier.plan import DenseShape, LayerPlan, Plan, attention_layout

GQA_MODES = ("kv_group", "query")


@dataclass(frozen=True)
class LadderSpec:
    """How to cut each module into levels (the defaults are the paper's)."""

    num_levels: int = 11
    mlp_multiple: int = 32
    attn_counts: list[int] | None = None  # a custom ladder, in units
    mlp_counts: list[int] | None = None

    def ladders(self, shape: DenseShape, gqa_mode: str) -> dict[str, list[int]]:
        attn_units = attention_units(shape, gqa_mode)
        if self.attn_counts is not None:
            attn = custom_ladder(self.attn_counts, attn_units)
        else:
            attn = parameter_ladder(attn_units, self.num_levels)
        if self.mlp_counts is not None:
            mlp = custom_ladder(self.mlp_counts, shape.intermediate_size)
        else:
            mlp = parameter_ladder(
                shape.intermediate_size, self.num_levels, self.mlp_multiple
            )
        if len(attn) != len(mlp):
            raise ValueError(
                f"attention ladder has {len(attn)} levels but MLP ladder {len(mlp)}; "
                "give both the same number of levels"
            )
        return {"attn": attn, "mlp": mlp}


def heads_per_unit(shape: DenseShape, gqa_mode: str) -> int:
    if gqa_mode not in GQA_MODES:
        raise ValueError(f"unknown gqa_mode {gqa_mode!r}; choose one of {GQA_MODES}")
    return shape.group_size if gqa_mode == "kv_group" else 1


def attention_units(shape: DenseShape, gqa_mode: str) -> int:
    return shape.num_heads // heads_per_unit(shape, gqa_mode)


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
