"""Held-out perplexity and KL(dense ‖ model), side by side on the same token windows.

lm-eval's tasks need the dataset hub, which these machines cannot reach; perplexity and
KL on held-out text measure the same thing locally (quality at a given size).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from darwin_modifier.data.windows import load_texts, token_windows
from darwin_modifier.evaluation.kl import dense_targets, kl_per_token


def heldout_windows(
    tokenizer,
    source="python-docs",
    seq_len: int = 512,
    num_windows: int | None = 32,
    text_column: str = "text",
) -> torch.Tensor:
    texts = load_texts(source, "heldout", text_column)
    return token_windows(texts, tokenizer, seq_len, num_windows, seed=1234)


@torch.no_grad()
def evaluate(
    models: dict[str, nn.Module],
    windows: torch.Tensor,
    reference: str | None = "dense",
    batch_size: int = 4,
) -> dict[str, dict[str, float]]:
    """Per model: perplexity, and (if ``reference`` is given) token-mean KL to it."""
    totals = {name: {"nll": 0.0, "kl": 0.0} for name in models}
    tokens = 0
    for batch in tqdm(windows.split(batch_size), desc="evaluating", leave=False):
        logits = {}
        for name, model in models.items():
            model.eval()
            device = next(model.parameters()).device
            out = model(batch.to(device), use_cache=False).logits[:, :-1].float()
            flat = out.reshape(-1, out.shape[-1])
            target = batch[:, 1:].reshape(-1, 1).to(device)
            logprobs = torch.log_softmax(flat, dim=-1)  # on the model's device
            totals[name]["nll"] -= logprobs.gather(-1, target).sum().item()
            logits[name] = flat.cpu()  # one batch of every model's logits is held
        if reference is not None:
            targets = dense_targets(logits[reference], dtype=torch.float32)
            for name, model_logits in logits.items():
                kl = kl_per_token(targets, model_logits)
                totals[name]["kl"] += kl.sum().item()
        tokens += batch[:, 1:].numel()
    results = {}
    for name, total in totals.items():
        results[name] = {"ppl": math.exp(total["nll"] / tokens)}
        if reference is not None:
            results[name]["kl"] = total["kl"] / tokens
    return results


def count_params(model: nn.Module) -> int:
    """All parameters, tied ones once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
