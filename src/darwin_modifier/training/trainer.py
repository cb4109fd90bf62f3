"""Full fine-tuning on token windows: plain PyTorch, AdamW, pluggable loss.

A hand-written loop rather than ``transformers.Trainer`` or accelerate: the search calls
it thousands of times on a few sequences each, where a Trainer's setup costs more than
the training, and the loop must restart from in-place-restored weights every time. The
same :class:`Trainer` serves post-compression training, with a schedule, evaluation,
hooks and checkpoints that resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from darwin_modifier.training.config import OptimConfig
from darwin_modifier.training.losses import LossFn, causal_lm_loss


def _lr_factor(step: int, total: int, settings: OptimConfig) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    if settings.schedule == "cosine" and total > settings.warmup_steps:
        progress = (step - settings.warmup_steps) / (total - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


# on_step(step, loss) -> True to stop
StepHook = Callable[[int, float], bool | None]


class Trainer:
    """Optimizer, schedule and step counter of one training run; checkpointable."""

    def __init__(
        self,
        model: nn.Module,
        settings: OptimConfig | None = None,
        total_steps: int = 0,
        loss_fn: LossFn = causal_lm_loss,
    ):
        settings = settings or OptimConfig()
        self.model, self.settings, self.loss_fn = model, settings, loss_fn
        self.frozen = (
            []
            if settings.train_embeddings
            else [p for p in embedding_parameters(model) if p.requires_grad]
        )
        frozen = {id(p) for p in self.frozen}
        self.params = [
            p for p in model.parameters() if p.requires_grad and id(p) not in frozen
        ]
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        # fused: one kernel over all parameters, without foreach's full-size
        # temporaries (an fp32 copy of every parameter at the sqrt step)
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
            fused=_fused_supported(self.params),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_factor(step, total_steps, settings)
        )
        self.step = 0

    @torch.enable_grad()  # callers may sit in no_grad (LLM Compressor calibrates there)
    def train_step(self, ids: torch.Tensor) -> float:
        device = next(self.model.parameters()).device
        self.model.train()
        for p in self.frozen:  # no gradient is computed or stored for them
            p.requires_grad_(False)
        try:
            # cache_enabled=False: the autocast cache would hold a bf16 copy of
            # every fp32 weight until the forward ends (2 bytes per parameter)
            with torch.autocast(
                device.type,
                torch.bfloat16,
                enabled=self.settings.bf16_autocast,
                cache_enabled=False,
            ):
                loss = self.loss_fn(self.model, ids.to(device))
            loss.backward()
        finally:
            for p in self.frozen:
                p.requires_grad_(True)
        if self.settings.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.item()

    def run(self, batches: Iterable[torch.Tensor], on_step: StepHook | None = None):
        """Train on ``batches``; returns the step losses. The model ends in eval
        mode."""
        losses = []
        try:
            for ids in batches:
                losses.append(self.train_step(ids))
                if on_step is not None and on_step(self.step, losses[-1]):
                    break
        finally:
            self.model.eval()
        return losses

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The input embeddings and the LM head (one matrix when tied)."""
    found: dict[int, nn.Parameter] = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        for p in module.parameters() if module is not None else ():
            found[id(p)] = p
    return list(found.values())


def _fused_supported(params: list[nn.Parameter]) -> bool:
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params
    )


def train(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    settings: OptimConfig | None = None,
    loss_fn: LossFn = causal_lm_loss,
    on_step: StepHook | None = None,
) -> list[float]:
    """One short run (the search's light training): train ``model`` in place."""
    batches = list(batches)
    return Trainer(model, settings, len(batches), loss_fn).run(batches, on_step)
