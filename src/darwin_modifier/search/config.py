"""The search's settings, declared once (``DarwinLMModifier`` inherits them).

Defaults are the paper's: 200 generations of 16 offspring, four successive-halving
stages with 10K-200K light-training tokens (DarwinLM, Tang et al. 2025, §3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from darwin_modifier.training.config import OptimConfig


@dataclass(frozen=True)
class Stage:
    """One successive-halving stage of the training-aware selection."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    survivors: int
    train_tokens: int
    fitness_tokens: int

    def __post_init__(self) -> None:
        if self.survivors < 1:
            raise ValueError(
                f"a stage must keep at least 1 survivor, got {self.survivors}"
            )
        if self.train_tokens < 0 or self.fitness_tokens < 1:
            raise ValueError(
                "a stage needs train_tokens >= 0 and fitness_tokens >= 1, got "
                f"{self.train_tokens} and {self.fitness_tokens}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's schedule for 16 offspring: (survivors, light-training tokens,
# fitness tokens)
PAPER_STAGES = (
    Stage(8, 10_000, 1_024),
    Stage(4, 50_000, 2_048),
    Stage(2, 100_000, 4_096),
    Stage(1, 200_000, 8_192),
)


def check_stages(stages: Sequence[Stage], offspring: int) -> None:
    """Refuse schedules that cannot run: survivors must shrink and end at one."""
    if not stages:
        raise ValueError("selection needs at least one stage")
    if stages[-1].survivors != 1:
        raise ValueError(
            f"the last stage must keep exactly 1 survivor (the next parent), got "
            f"{stages[-1].survivors}"
        )
    previous = offspring
    for i, stage in enumerate(stages[:-1]):
        if stage.survivors > previous:
            raise ValueError(
                f"stage {i + 1} keeps {stage.survivors} of only {previous} candidates"
            )
        previous = stage.survivors


class SearchConfig(BaseModel):
    """The (1+λ) loop, its selection schedule, and the token pools it draws from."""

    model_config = ConfigDict(extra="forbid")

    generations: int = Field(default=200, ge=0)
    offspring: int = Field(default=16, ge=1)
    selection_stages: list[Stage] = Field(default_factory=lambda: list(PAPER_STAGES))
    max_flips: int = Field(default=3, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)  # light training (AdamW)
    fitness: Literal["kl", "topk_kl"] = "kl"
    fitness_topk: int = Field(default=256, ge=1)
    seed: int = 0
    search_dataset: str = "python-docs"
    search_text_column: str = "text"
    search_seq_len: int = Field(default=4096, ge=8)
    fitness_pool_tokens: int = Field(default=100_000, ge=1)
    train_pool_tokens: int = Field(default=500_000, ge=0)
    # held-out tokens the parent is scored on every generation: the search curve's
    # progress on fixed data (selection draws fresh tokens); 0 for none
    probe_tokens: int = Field(default=4096, ge=0)
    eval_batch_size: int = Field(default=4, ge=1)
    # the light training's memory: see training.config.OptimConfig
    gradient_checkpointing: bool = False
    train_embeddings: bool = True

    @model_validator(mode="after")
    def _stages_can_run(self) -> SearchConfig:
        check_stages(self.selection_stages, self.offspring)
        return self

    def search_settings(self) -> dict:
        """These settings alone (a subclass, such as the modifier, has more fields)."""
        settings = self.model_dump(include=set(SearchConfig.model_fields))
        settings["selection_stages"] = [s.to_dict() for s in self.selection_stages]
        return settings

    def light_training(self) -> OptimConfig:
        """The optimizer settings every candidate is trained with."""
        return OptimConfig(
            learning_rate=self.learning_rate,
            gradient_checkpointing=self.gradient_checkpointing,
            train_embeddings=self.train_embeddings,
        )
