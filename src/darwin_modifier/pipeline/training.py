"""Post-training step: the text it trains on, then the run, in fp32 master weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.artifacts.plots import plot_training
from darwin_modifier.data.windows import load_texts, token_windows
from darwin_modifier.evaluation.quality import heldout_windows
from darwin_modifier.pipeline.config import TrainingConfig
from darwin_modifier.training.posttrain import post_train


@dataclass
class TrainingData:
    """Training windows (from the source's train split) and held-out windows."""

    train: torch.Tensor
    heldout: torch.Tensor | None

    @classmethod
    def load(cls, config: TrainingConfig, model: nn.Module) -> TrainingData:
        tokenizer = _load_tokenizer(config, model)
        texts = load_texts(config.dataset, "train", config.text_column)
        train = token_windows(
            texts,
            tokenizer,
            config.seq_len,
            config.steps * config.batch_size,
            config.seed,
        )
        heldout = None
        if config.eval_windows:
            heldout = heldout_windows(
                tokenizer,
                config.dataset,
                config.seq_len,
                config.eval_windows,
                config.text_column,
            )
        return cls(train, heldout)


def train_model(model: nn.Module, config: TrainingConfig, data: TrainingData) -> dict:
    """Train ``model`` in place (resuming from ``config.train_dir``); the history."""
    device = next(model.parameters()).device
    teacher = None
    if config.loss == "kd":
        teacher = AutoModelForCausalLM.from_pretrained(
            config.teacher, dtype=torch.float32
        ).to(device)
        teacher.eval().requires_grad_(False)
    # fp32 master weights: AdamW steps of lr 1e-5 vanish in bf16 / fp16 weights
    # (oneshot loads hub models in their own dtype); bf16_autocast keeps the speed.
    dtype = next(model.parameters()).dtype
    model.to(torch.float32)
    logger.info(
        f"post-training: {config.steps} steps of {config.batch_size} x "
        f"{config.seq_len} tokens, loss {config.loss}"
    )
    history = post_train(
        model, data.train, config, config.train_dir, teacher, data.heldout
    )
    model.to(dtype)
    plot_training(Path(config.train_dir) / "posttrain.png", history)
    return history


def _load_tokenizer(config: TrainingConfig, model: nn.Module):
    source = config.tokenizer or getattr(model.config, "_name_or_path", "")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        where = source if source and os.path.exists(str(source)) else repr(source)
        raise ValueError(
            f"DarwinLMTrainingModifier needs a tokenizer for its training text "
            f"and found none at {where}; set tokenizer: to the model's path or "
            "hub id"
        ) from exc
