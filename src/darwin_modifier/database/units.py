"""What one attention unit is in each GQA mode.

- ``"kv_group"`` (default, regular): a whole KV group (its query heads and the KV head)
  is one unit, so the shrunk layer is plain GQA with no KV repeat. On SmolLM2 this spent
  the budget about twice as well as query-only removal (one-shot at 50% of the
  decoder-block parameters: held-out perplexity 35 against 66).
- ``"query"`` (the paper's GQA behaviour): single query heads; every KV head that still
  serves a query stays, and the format repeats KV heads where groups end up unbalanced.

On MHA models both modes are the same.
"""

from __future__ import annotations

from darwin_modifier.plan import DenseShape

GQA_MODES = ("kv_group", "query")


def heads_per_unit(shape: DenseShape, gqa_mode: str) -> int:
    if gqa_mode not in GQA_MODES:
        raise ValueError(f"unknown gqa_mode {gqa_mode!r}; choose one of {GQA_MODES}")
    return shape.group_size if gqa_mode == "kv_group" else 1


def attention_units(shape: DenseShape, gqa_mode: str) -> int:
    return shape.num_heads // heads_per_unit(shape, gqa_mode)
