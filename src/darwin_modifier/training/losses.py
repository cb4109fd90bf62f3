"""Training losses: next-token cross-entropy (the paper's), distillation, or a mix."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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

    ``topk`` restricts the teacher's distribution to its k most likely tokens
    (renormalised), which is what fits in memory for 128K+ vocabularies.
    """
    if not 0.0 <= ce_weight <= 1.0:
        raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")
    teacher.eval()

    def loss_fn(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(ids.to(_device(teacher)), use_cache=False).logits
            t_logp = torch.log_softmax(t_logits.float().to(ids.device), dim=-1)
        s_logits = model(ids, use_cache=False).logits.float()
        s_logp = torch.log_softmax(s_logits, dim=-1)
        if topk is None:
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
        else:
            top, idx = t_logp.topk(topk, dim=-1)
            top = top - top.logsumexp(-1, keepdim=True)
            kl = (top.exp() * (top - s_logp.gather(-1, idx))).sum(-1).mean()
        if ce_weight == 0.0:
            return kl
        ce = nn.functional.cross_entropy(
            s_logits[:, :-1].reshape(-1, s_logits.shape[-1]), ids[:, 1:].reshape(-1)
        )
        return (1 - ce_weight) * kl + ce_weight * ce

    return loss_fn


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
