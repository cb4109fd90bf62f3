"""The settings of a whole DarwinLM run, composed from each step's own config.

Each step declares its settings once (:class:`~darwin_modifier.database.config.
DatabaseConfig`, :class:`~darwin_modifier.search.config.SearchConfig`,
:class:`~darwin_modifier.training.config.PostTrainConfig`); this module adds what joins
them (the size target, the directories) and the checks that need more than one step.
The LLM Compressor modifiers inherit these classes, so a recipe's fields *are* the
pipeline's settings.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from darwin_modifier.database.config import DatabaseConfig
from darwin_modifier.latency.config import LatencyConfig
from darwin_modifier.plan import DenseShape, Plan
from darwin_modifier.search.config import SearchConfig
from darwin_modifier.training.config import PostTrainConfig

DEFAULT_TARGET_LEVEL = 5  # the paper's: Llama-3.1-8B -> 4.6B, Qwen-2.5-14B -> 8.4B


class SizeTarget(BaseModel):
    """One of: decoder-block parameters kept (fraction or count), a level, or a
    speedup measured on vLLM (:mod:`darwin_modifier.latency`)."""

    model_config = ConfigDict(extra="forbid")

    target_fraction: float | None = Field(default=None, gt=0, le=1)
    target_params: int | None = Field(default=None, gt=0)
    target_level: int | None = Field(default=None, ge=0)
    target_speedup: float | None = Field(default=None, gt=1)

    @model_validator(mode="after")
    def _one_target(self) -> SizeTarget:
        given = [
            name
            for name in (
                "target_fraction",
                "target_params",
                "target_level",
                "target_speedup",
            )
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give only one size target, got {given}")
        return self

    def resolve(self, dense_params: int) -> tuple[int | None, int | None]:
        """(target params, target level) for ``dense_params`` decoder-block params;
        both None for a speedup (its budget is time, from the latency table)."""
        if self.target_speedup is not None:
            return None, None
        if self.target_fraction is not None:
            return int(self.target_fraction * dense_params), None
        if self.target_params is not None:
            return self.target_params, None
        level = DEFAULT_TARGET_LEVEL if self.target_level is None else self.target_level
        return None, level


class SaveDtype(BaseModel):
    """The dtype a step leaves the model in, which ``oneshot`` then saves.

    ``auto`` keeps the dtype of the model the step was given (oneshot loads a hub
    checkpoint in its own dtype, bf16 for most). Set it to what you serve (vLLM serves
    bf16 by default) when the model came in another dtype, as the fp32 default model
    does: vLLM then loads the weights as they are, without a cast per tensor.
    """

    save_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"

    def output_dtype(self, given: torch.dtype) -> torch.dtype:
        return given if self.save_dtype == "auto" else getattr(torch, self.save_dtype)


class DarwinLMConfig(
    SizeTarget, DatabaseConfig, SearchConfig, LatencyConfig, SaveDtype
):
    """Database -> search -> shrink, for one size target."""

    database_dir: str = "darwinlm_database"
    search_dir: str = "darwinlm_search"
    shrink: bool = True

    @model_validator(mode="after")
    def _target_level_keeps_something(self) -> DarwinLMConfig:
        _, level = self.resolve(1)
        if level is not None and level >= self.num_levels - 1:
            given = "target_level" if self.target_level is not None else "the default"
            raise ValueError(
                f"{given} {level} removes every block (the last level of "
                f"{self.num_levels} is removal); set target_level below "
                f"{self.num_levels - 1} or give target_fraction"
            )
        return self

    def check_model(self, model_config) -> None:
        """Settings the model itself rules out, refused before any calibration."""
        if str(getattr(model_config, "model_type", "")).startswith("darwinlm_"):
            raise ValueError(
                f"the model is already shrunk by DarwinLM "
                f"(model_type={model_config.model_type}): its layers differ in size, "
                "which the database's levels cannot describe; prune the dense model "
                "with the smaller target instead"
            )
        vocab = getattr(model_config, "vocab_size", None)
        if self.fitness == "topk_kl" and vocab and self.fitness_topk > vocab:
            raise ValueError(
                f"fitness_topk {self.fitness_topk} exceeds the vocabulary "
                f"({vocab} tokens); set fitness_topk to at most {vocab} or fitness: kl"
            )
        positions = getattr(model_config, "max_position_embeddings", None)
        if self.generations > 0 and positions and self.search_seq_len > positions:
            raise ValueError(
                f"search_seq_len {self.search_seq_len} exceeds the model's "
                f"max_position_embeddings ({positions}); set search_seq_len to at "
                f"most {positions}"
            )

    def checked_ladders(self, shape: DenseShape) -> dict[str, list[int]]:
        """The ladders for ``shape``; an infeasible target fails here, before any
        calibration."""
        dense = Plan.dense(shape).block_params()
        if self.target_params is not None and self.target_params > dense:
            raise ValueError(
                f"target_params {self.target_params:,} exceeds the dense model's "
                f"{dense:,} decoder-block parameters"
            )
        return self.ladders(shape)


class TrainingConfig(PostTrainConfig, SaveDtype):
    """Post-training with its data: where the text, the teacher and the checkpoints
    are."""

    teacher: str | None = None  # dense model (path or hub id) for loss "kd"
    seq_len: int = Field(default=4096, ge=8)
    dataset: str = "python-docs"
    text_column: str = "text"
    tokenizer: str | None = None  # default: the model's own directory
    eval_windows: int = Field(default=0, ge=0)  # held-out windows; 0 = no evaluation
    train_dir: str = "darwinlm_train"
    seed: int = 0

    @model_validator(mode="after")
    def _teacher_for_kd(self) -> TrainingConfig:
        if self.loss == "kd" and not self.teacher:
            raise ValueError(
                "loss 'kd' distils from a teacher: set teacher to the dense model's "
                "path or hub id"
            )
        if self.loss == "ce" and (self.ce_weight or self.kd_topk):
            raise ValueError("ce_weight and kd_topk apply only to loss 'kd'")
        if self.steps < 1:
            raise ValueError(
                f"tokens {self.tokens} make no step of {self.batch_size} x "
                f"{self.seq_len} tokens; raise tokens or lower seq_len"
            )
        return self

    @property
    def steps(self) -> int:
        return self.tokens // (self.seq_len * self.batch_size)

    def check_teacher(self) -> None:
        """Before any work (also before earlier stages): the teacher can be loaded."""
        if self.loss != "kd":
            return
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(self.teacher)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"teacher {self.teacher!r} has no loadable config ({exc}); set "
                "teacher to the dense model's directory or hub id"
            ) from exc
