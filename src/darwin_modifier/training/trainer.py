"""Full fine-tuning on token windows: plain PyTorch, AdamW, next-token loss.

A hand-written loop rather than ``transformers.Trainer`` or accelerate: the search calls
it thousands of times on a few sequences each, where a Trainer's setup costs more than
the training, and the loop must restart from in-place-restored weights every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainSettings:
    """Defaults are the paper's light training: AdamW 1e-5, no schedule, batch 1."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # or "cosine"
    max_grad_norm: float | None = None
    bf16_autocast: bool = True  # fp32 master weights, bf16 matmuls

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(
                f"schedule must be 'constant' or 'cosine', got {self.schedule!r}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def causal_lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``ids`` (``[batch, seq]``)."""
    logits = model(ids, use_cache=False).logits[:, :-1].float()
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def _lr_factor(step: int, total: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.schedule == "cosine" and total > settings.warmup_steps:
        progress = (step - settings.warmup_steps) / (total - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


@torch.enable_grad()  # callers may sit in no_grad (LLM Compressor calibrates under it)
def train(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    settings: TrainSettings = TrainSettings(),
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = causal_lm_loss,
    on_step: Callable[[int, float], bool | None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``batches`` (each ``[batch, seq]`` token ids).

    ``on_step(step, loss)`` may return True to stop early. Returns the step losses.
    """
    batches = list(batches)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, len(batches), settings)
    )
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        for step, ids in enumerate(batches):
            with torch.autocast(
                device.type, torch.bfloat16, enabled=settings.bf16_autocast
            ):
                loss = loss_fn(model, ids.to(device))
            loss.backward()
            if settings.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step is not None and on_step(step, losses[-1]):
                break
    finally:
        model.train(was_training)
    return losses
