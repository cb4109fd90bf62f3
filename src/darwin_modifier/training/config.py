"""Training settings, declared once: the optimizer, and post-training on top of it.

The defaults of :class:`OptimConfig` are the paper's light training (AdamW 1e-5, no
schedule); :class:`PostTrainConfig` changes only the defaults that a long run needs
(warm-up, cosine decay, clipping). ``DarwinLMTrainingModifier`` inherits
:class:`PostTrainConfig`, so recipe fields and these settings are the same objects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OptimConfig(BaseModel):
    """AdamW and its schedule; fp32 master weights, bf16 matmuls under autocast."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=1e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float | None = Field(default=None, gt=0)
    bf16_autocast: bool = True
    # Memory (see darwin_modifier.memory): recompute each decoder layer in the
    # backward pass instead of keeping its activations (same result, ~1/3 more
    # compute); and whether the embeddings and LM head train too. Frozen, they need
    # neither gradients nor AdamW states: 12 bytes per parameter fewer (1.6 GB per
    # 128K x 4096 matrix), which is what fits the 8B recipe's search on 80 GB.
    gradient_checkpointing: bool = False
    train_embeddings: bool = True


class PostTrainConfig(OptimConfig):
    """A post-compression training run on a token budget."""

    tokens: int = Field(default=1_000_000, ge=1)
    batch_size: int = Field(default=1, ge=1)
    loss: Literal["ce", "kd"] = "ce"  # cross-entropy (the paper's) or distillation
    ce_weight: float = Field(default=0.0, ge=0, le=1)  # CE share of a "kd" mix
    kd_topk: int | None = Field(default=None, ge=1)
    eval_every: int = Field(default=0, ge=0)  # steps; 0 = before and after only
    checkpoint_every: int = Field(default=50, ge=1)
    # a long run's defaults
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)

    def training_settings(self) -> dict:
        """These settings alone (a subclass, such as the modifier, has more fields)."""
        return self.model_dump(include=set(PostTrainConfig.model_fields))

    def schedule_identity(self) -> dict:
        """What shapes the run (a resumed run must share it), not how it reports."""
        settings = self.training_settings()
        for key in ("eval_every", "checkpoint_every", "gradient_checkpointing"):
            settings.pop(key)
        return settings
