"""DarwinLMModifier: the method's table of contents, one call per step.

1. calibration (LLM Compressor's pipeline) -> second-order database, layer by layer
2. evolutionary, training-aware search over database levels for the size target
3. the winner stitched from the database and the model shrunk in place, so that
   ``oneshot(output_dir=...)`` saves the smaller checkpoint with a truthful config.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from llmcompressor.core import Event, State
from llmcompressor.modifiers import Modifier
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from darwin_modifier.database.assemble import assemble
from darwin_modifier.database.build import DatabaseBuilder
from darwin_modifier.database.prune import LadderSpec
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.families import family_of
from darwin_modifier.modifier.inplace import shrink_in_place, undo_offloading
from darwin_modifier.plan import DenseShape, Plan

__all__ = ["DarwinLMModifier", "StageSpec"]


class StageSpec(BaseModel):
    """One successive-halving stage of the training-aware selection."""

    model_config = ConfigDict(extra="forbid")
    survivors: int = Field(ge=1)
    train_tokens: int = Field(ge=0)
    fitness_tokens: int = Field(ge=1)


PAPER_STAGE_SPECS = [
    StageSpec(survivors=8, train_tokens=10_000, fitness_tokens=1_024),
    StageSpec(survivors=4, train_tokens=50_000, fitness_tokens=2_048),
    StageSpec(survivors=2, train_tokens=100_000, fitness_tokens=4_096),
    StageSpec(survivors=1, train_tokens=200_000, fitness_tokens=8_192),
]


class DarwinLMModifier(Modifier):
    """Evolutionary, training-aware structured pruning (DarwinLM). Defaults: the
    paper's.

    Size target: give one of ``target_fraction`` (decoder-block parameters kept),
    ``target_params`` (decoder-block parameters) or ``target_level`` (every module at
    that database level, the paper's way); none means ``target_level: 5``.
    """

    requires_calibration_data: bool = True

    # size target
    target_fraction: float | None = Field(default=None, gt=0, le=1)
    target_params: int | None = Field(default=None, gt=0)
    target_level: int | None = Field(default=None, ge=0)
    # database
    database_dir: str = "darwinlm_database"
    gqa_mode: Literal["kv_group", "query"] = "kv_group"
    num_levels: int = Field(default=11, ge=2)
    mlp_multiple: int = Field(default=32, ge=1)
    attn_ladder: list[int] | None = None
    mlp_ladder: list[int] | None = None
    damp: float = Field(default=0.01, gt=0)
    database_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # search
    generations: int = Field(default=200, ge=0)
    offspring: int = Field(default=16, ge=1)
    selection_stages: list[StageSpec] = Field(
        default_factory=lambda: list(PAPER_STAGE_SPECS)
    )
    max_flips: int = Field(default=3, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)
    fitness: Literal["kl", "topk_kl"] = "kl"
    fitness_topk: int = Field(default=256, ge=1)
    seed: int = 0
    search_dir: str = "darwinlm_search"
    search_dataset: str = "python-docs"
    search_text_column: str = "text"
    search_seq_len: int = Field(default=4096, ge=8)
    fitness_pool_tokens: int = Field(default=100_000, ge=1)
    train_pool_tokens: int = Field(default=500_000, ge=0)
    eval_batch_size: int = Field(default=4, ge=1)
    # output
    shrink: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> DarwinLMModifier:
        given = [
            name
            for name in ("target_fraction", "target_params", "target_level")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give only one size target, got {given}")
        if self.target_level is not None and self.target_level >= self.num_levels - 1:
            raise ValueError(
                f"target_level {self.target_level} removes every block (the last level "
                f"of {self.num_levels} is removal); choose a level below "
                f"{self.num_levels - 1}"
            )
        from darwin_modifier.search.selection import Stage, check_stages

        check_stages(
            [Stage(**s.model_dump()) for s in self.selection_stages], self.offspring
        )
        return self

    # ---- lifecycle ------------------------------------------------------------------

    def on_initialize(self, state: State, **kwargs) -> bool:
        model = state.model
        family_of(model.config)  # unsupported architectures fail here, before any work
        from darwin_modifier.modifier.chain import refuse_quantization_in_same_pass

        refuse_quantization_in_same_pass(self)  # quantization must be a later stage
        self._shape = DenseShape.from_config(model.config)
        ladders = self._ladder_spec().ladders(self._shape, self.gqa_mode)
        self._check_target(ladders)
        identity = {
            "source_model": getattr(model.config, "_name_or_path", ""),
            "shape": self._shape.__dict__,
            "calibration": _calibration_fingerprint(state),
            "gqa_mode": self.gqa_mode,
            "damp": self.damp,
            "dtype": str(next(model.parameters()).dtype),
            "storage_dtype": self.database_dtype,
        }
        self._store = DatabaseStore.open_or_create(self.database_dir, identity, ladders)
        self._builder = DatabaseBuilder(model, self._store, self.gqa_mode, self.damp)
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs) -> None:
        for module in self._builder.watched():
            self.register_hook(module, self._builder.hook, "forward")

    def on_sequential_epoch_end(self, state: State, event: Event, modules, **kwargs):
        self._builder.finish_ready_layers(modules)

    def on_calibration_end(self, state: State, event: Event, **kwargs) -> None:
        self.remove_hooks()
        self._builder.finish_all()

    def on_finalize(self, state: State, **kwargs) -> bool:
        # Not in on_calibration_end: LLM Compressor's calibration context is still
        # active there (no grad, LM head disabled), and the search needs both.
        self.remove_hooks()
        self._store.require_complete()
        if self.generations > 0:
            undo_offloading(state.model)  # the light training needs real parameters
        best = self._search(state.model)
        if self.shrink:
            plan, overrides = assemble(self._store, best.attn, best.mlp)
            shrink_in_place(state.model, plan, overrides)
            logger.info(
                f"DarwinLM: decoder blocks {plan.block_params():,} params "
                f"({plan.kept_fraction():.1%} of dense)"
            )
        return True

    # ---- steps ----------------------------------------------------------------------

    def _ladder_spec(self) -> LadderSpec:
        return LadderSpec(
            num_levels=self.num_levels,
            mlp_multiple=self.mlp_multiple,
            attn_counts=self.attn_ladder,
            mlp_counts=self.mlp_ladder,
        )

    def _check_target(self, ladders: dict[str, list[int]]) -> None:
        """Refuse an infeasible target before calibration starts."""
        dense = Plan.dense(self._shape).block_params()
        if self.target_params is not None and self.target_params > dense:
            raise ValueError(
                f"target_params {self.target_params:,} exceeds the dense model's "
                f"{dense:,} decoder-block parameters"
            )
        if len(ladders["attn"]) != self.num_levels:
            raise ValueError(
                f"custom ladders have {len(ladders['attn'])} levels but num_levels is "
                f"{self.num_levels}; set num_levels to match"
            )

    def target(self, dense_params: int) -> tuple[int | None, int | None]:
        """(target params, target level) for a model of ``dense_params`` block
        params."""
        if self.target_fraction is not None:
            return int(self.target_fraction * dense_params), None
        if self.target_params is not None:
            return self.target_params, None
        return None, 5 if self.target_level is None else self.target_level

    def _search(self, model):
        from darwin_modifier.modifier.search_step import search

        return search(self, model, self._store)


def _calibration_fingerprint(state: State) -> str:
    """Order-independent hash of the calibration token ids (oneshot may shuffle)."""
    loader = getattr(getattr(state, "data", None), "calib", None)
    if loader is None:
        return "none"
    digests = []
    for batch in loader:
        ids = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        for row in torch.as_tensor(ids):
            digests.append(
                hashlib.sha256(row.to(torch.int64).numpy().tobytes()).hexdigest()
            )
    return (
        hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]
        + f"-{len(digests)}"
    )
