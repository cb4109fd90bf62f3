"""What the memory plan needs to know of a model, read from its config alone.

The model is built on the meta device (no weights, no download beyond
``config.json``), so parameter counts are transformers' own, for any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from darwin_modifier.plan import DenseShape, Plan


@dataclass(frozen=True)
class ModelSpec:
    shape: DenseShape
    vocab_size: int
    tied: bool  # one matrix for the input embeddings and the LM head
    dtype: torch.dtype  # what oneshot loads it in
    total_params: int

    @property
    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def embedding_params(self) -> int:
        """Input embeddings and LM head."""
        return self.vocab_size * self.shape.hidden_size * (1 if self.tied else 2)

    @property
    def other_params(self) -> int:
        """Neither decoder blocks nor embeddings (the final norm)."""
        blocks = Plan.dense(self.shape).block_params()
        return self.total_params - blocks - self.embedding_params

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelSpec:
        head = model.get_output_embeddings()
        tied = head is not None and head.weight is model.get_input_embeddings().weight
        return cls(
            shape=DenseShape.from_config(model.config),
            vocab_size=model.config.vocab_size,
            tied=tied,
            dtype=next(model.parameters()).dtype,
            total_params=sum(p.numel() for p in model.parameters()),
        )

    @classmethod
    def from_config(cls, config, dtype: torch.dtype | None = None) -> ModelSpec:
        """``dtype``: default the config's own (hub checkpoints say bf16), else fp32."""
        from transformers import AutoModelForCausalLM

        from darwin_modifier.families import family_of

        family_of(config)  # an unsupported architecture is named here
        dtype = dtype or _config_dtype(config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return cls.from_model(model)

    @classmethod
    def from_pretrained(cls, name: str, dtype: torch.dtype | None = None) -> ModelSpec:
        from transformers import AutoConfig

        return cls.from_config(AutoConfig.from_pretrained(name), dtype)


def _config_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32
