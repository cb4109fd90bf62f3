"""How the database is built: the one declaration of its settings and defaults.

``DarwinLMModifier`` inherits these fields, so a recipe sets them by name and the
pipeline reads them from the modifier itself (nothing is copied field by field).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darwin_modifier.database.ladder import (
    MLP_CHANNEL_MULTIPLE,
    NUM_LEVELS,
    custom_ladder,
    parameter_ladder,
)
from darwin_modifier.database.units import attention_units
from darwin_modifier.plan import DenseShape


class DatabaseConfig(BaseModel):
    """Second-order levels per module; the defaults are the paper's."""

    model_config = ConfigDict(extra="forbid")

    gqa_mode: Literal["kv_group", "query"] = "kv_group"
    num_levels: int = Field(default=NUM_LEVELS, ge=2)
    mlp_multiple: int = Field(default=MLP_CHANNEL_MULTIPLE, ge=1)
    attn_ladder: list[int] | None = None  # custom ladder, in attention units
    mlp_ladder: list[int] | None = None  # custom ladder, in MLP channels
    damp: float = Field(default=0.01, gt=0)
    database_dtype: Literal["float16", "bfloat16", "float32"] = "float16"

    def ladders(self, shape: DenseShape) -> dict[str, list[int]]:
        """Kept unit counts per level for both modules (same number of levels)."""
        units = attention_units(shape, self.gqa_mode)
        if self.attn_ladder is not None:
            attn = custom_ladder(self.attn_ladder, units)
        else:
            attn = parameter_ladder(units, self.num_levels)
        if self.mlp_ladder is not None:
            mlp = custom_ladder(self.mlp_ladder, shape.intermediate_size)
        else:
            mlp = parameter_ladder(
                shape.intermediate_size, self.num_levels, self.mlp_multiple
            )
        if len(attn) != len(mlp):
            raise ValueError(
                f"attention ladder has {len(attn)} levels but MLP ladder {len(mlp)}; "
                "give both the same number of levels"
            )
        if len(attn) != self.num_levels:
            raise ValueError(
                f"custom ladders have {len(attn)} levels but num_levels is "
                f"{self.num_levels}; set num_levels to match"
            )
        return {"attn": attn, "mlp": mlp}
