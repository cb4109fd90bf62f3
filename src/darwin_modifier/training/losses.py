"""Training losses: next-token cross-entropy (the paper's), distillation, or a mix."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from darwin_modifier.evaluation.kl import dense_targets, kl_divergence, tokens_per_chunk

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def causal_lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``ids`` (``[batch, seq]``).

    The LM head and the loss run over chunks of tokens, each recomputed in the
    backward pass, so one chunk's logits exist at a time: whole, at 4096 tokens x 128K
    vocabulary, the logits with their fp32 copy, log-softmax and gradient take ~8 GB.
    A sequence that fits in one chunk (the CPU demo's) is computed directly.
    """
    hidden = model.base_model(ids, use_cache=False).last_hidden_state[:, :-1]
    flat = hidden.reshape(-1, hidden.shape[-1])
    labels = ids[:, 1:].reshape(-1)
    head = model.get_output_embeddings()

    def summed(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        return nn.functional.cross_entropy(logits, y, reduction="sum")

    step = tokens_per_chunk(model.config.vocab_size)
    if len(labels) <= step:
        return summed(flat, labels) / len(labels)
    chunks = zip(flat.split(step), labels.split(step), strict=True)
    total = sum(checkpoint(summed, h, y, use_reentrant=False) for h, y in chunks)
    return total / len(labels)


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
