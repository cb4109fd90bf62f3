"""Training losses: next-token cross-entropy (the paper's), distillation, or a mix."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from darwin_modifier.evaluation.kl import dense_targets, kl_divergence

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def causal_lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``ids`` (``[batch, seq]``)."""
    logits = model(ids, use_cache=False).logits[:, :-1].float()
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def distillation_loss(
    teacher: nn.Module, topk: int | None = None, ce_weight: float = 0.0
) -> LossFn:
    """KL(teacher ‖ student) on the logits, optionally mixed with cross-entropy.

    The KL is the search's (:mod:`darwin_modifier.evaluation.kl`): with ``topk`` it
    compares the teacher's k most likely tokens and "the rest" as one bucket, which
    is what fits in memory for 128K+ vocabularies.
    """
    if not 0.0 <= ce_weight <= 1.0:
        raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")
    teacher.eval()

    def loss_fn(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(ids.to(_device(teacher)), use_cache=False).logits
            targets = dense_targets(
                t_logits.to(ids.device), topk, dtype=torch.float32, device=None
            )
        s_logits = model(ids, use_cache=False).logits
        kl = kl_divergence(targets, s_logits)
        if ce_weight == 0.0:
            return kl
        s_logits = s_logits.float()
        ce = nn.functional.cross_entropy(
            s_logits[:, :-1].reshape(-1, s_logits.shape[-1]), ids[:, 1:].reshape(-1)
        )
        return (1 - ce_weight) * kl + ce_weight * ce

    return loss_fn


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
