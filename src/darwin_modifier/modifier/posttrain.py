"""DarwinLMTrainingModifier: post-compression training as a recipe stage.

LLM Compressor 0.14 has no training entry point, so training after the search is a
modifier that needs no calibration data (oneshot runs it with the data-free pipeline)
and trains in ``on_finalize``, where the model has its final shapes: after a
``DarwinLMModifier`` listed before it in the same stage, or in a later stage of
:func:`~darwin_modifier.modifier.chain.oneshot_stages`. ``oneshot(output_dir=...)`` then
saves the trained model in the same checkpoint format.

It draws its own token windows (like the search does) from ``dataset``'s train split,
because the training budget is far larger than a calibration set. Checkpoints in
``train_dir`` let a killed run resume where it stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from llmcompressor.core import State
from llmcompressor.modifiers import Modifier
from loguru import logger
from pydantic import Field, model_validator
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data.windows import load_texts, token_windows
from darwin_modifier.evaluation.quality import heldout_windows
from darwin_modifier.modifier.inplace import undo_offloading
from darwin_modifier.report import plot_training
from darwin_modifier.training.posttrain import PostTrainSettings, post_train
from darwin_modifier.training.trainer import TrainSettings

__all__ = ["DarwinLMTrainingModifier"]


class DarwinLMTrainingModifier(Modifier):
    """Train the (shrunk) model on a token budget.

    Loss: cross-entropy (the paper's) or distillation from ``teacher`` (``loss: kd``,
    optionally mixed with cross-entropy by ``ce_weight``).
    """

    requires_calibration_data: bool = False

    tokens: int = Field(default=1_000_000, ge=1)
    loss: Literal["ce", "kd"] = "ce"
    teacher: str | None = None  # dense model (path or hub id) for loss "kd"
    ce_weight: float = Field(default=0.0, ge=0)
    kd_topk: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0)
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    bf16_autocast: bool = True
    batch_size: int = Field(default=1, ge=1)
    seq_len: int = Field(default=4096, ge=8)
    dataset: str = "python-docs"
    text_column: str = "text"
    tokenizer: str | None = None  # default: the model's own directory
    eval_windows: int = Field(default=0, ge=0)  # held-out windows; 0 = no evaluation
    eval_every: int = Field(default=0, ge=0)  # steps; 0 = before and after only
    checkpoint_every: int = Field(default=50, ge=1)
    train_dir: str = "darwinlm_train"
    seed: int = 0

    @model_validator(mode="after")
    def _teacher_for_kd(self) -> DarwinLMTrainingModifier:
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

    def settings(self) -> PostTrainSettings:
        return PostTrainSettings(
            tokens=self.tokens,
            batch_size=self.batch_size,
            loss=self.loss,
            ce_weight=self.ce_weight,
            kd_topk=self.kd_topk,
            eval_every=self.eval_every,
            checkpoint_every=self.checkpoint_every,
            optim=TrainSettings(
                lr=self.learning_rate,
                weight_decay=self.weight_decay,
                warmup_steps=self.warmup_steps,
                schedule=self.schedule,
                max_grad_norm=self.max_grad_norm,
                bf16_autocast=self.bf16_autocast,
            ),
        )

    def on_initialize(self, state: State, **kwargs) -> bool:
        from llmcompressor.core import active_session

        from darwin_modifier.modifier.chain import (
            check_training_order,
            refuse_quantization_in_same_pass,
        )

        refuse_quantization_in_same_pass(self)  # it would calibrate untrained weights
        check_training_order(active_session().lifecycle.recipe.modifiers or [])
        self.check_teacher()
        # Text and tokenizer now, so that a bad source fails before any calibration.
        tokenizer = self._load_tokenizer(state.model)
        texts = load_texts(self.dataset, "train", self.text_column)
        self._windows = token_windows(
            texts, tokenizer, self.seq_len, self.steps * self.batch_size, self.seed
        )
        self._heldout = None
        if self.eval_windows:
            self._heldout = heldout_windows(
                tokenizer,
                self.dataset,
                self.seq_len,
                self.eval_windows,
                self.text_column,
            )
        return True

    def on_finalize(self, state: State, **kwargs) -> bool:
        model = state.model
        undo_offloading(model)
        device = next(model.parameters()).device
        teacher = None
        if self.loss == "kd":
            teacher = AutoModelForCausalLM.from_pretrained(
                self.teacher, dtype=torch.float32
            ).to(device)
            teacher.eval().requires_grad_(False)
        # fp32 master weights: AdamW steps of lr 1e-5 vanish in bf16 / fp16 weights
        # (oneshot loads hub models in their own dtype); bf16_autocast keeps the speed.
        dtype = next(model.parameters()).dtype
        model.to(torch.float32)
        logger.info(
            f"post-training: {self.steps} steps of {self.batch_size} x {self.seq_len} "
            f"tokens, loss {self.loss}"
        )
        history = post_train(
            model,
            self._windows,
            self.settings(),
            self.train_dir,
            teacher,
            self._heldout,
        )
        model.to(dtype)
        plot_training(Path(self.train_dir) / "posttrain.png", history)
        return True

    def _load_tokenizer(self, model):
        source = self.tokenizer or getattr(model.config, "_name_or_path", "")
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            where = source if source and os.path.exists(str(source)) else repr(source)
            raise ValueError(
                f"DarwinLMTrainingModifier needs a tokenizer for its training text "
                f"and found none at {where}; set tokenizer: to the model's path or "
                "hub id"
            ) from exc
