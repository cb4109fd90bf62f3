"""The one KL of the package: KL(P_dense || P_model) per token, against dense targets.

The search's fitness (dense targets cached once for the fitness pool and reused for
every candidate: DarwinLM, Tang et al. 2025, arXiv 2502.07780, §3), held-out
evaluation and distillation all take it from here, with one meaning of top-k. What is
kept per token:

- **full**: the log-probabilities over the whole vocabulary, in a compact float dtype.
  float16 (the default) keeps 11 significant bits, bfloat16 8; log-probs below -65504
  become -inf in float16, i.e. probability 0 (they are below 1e-28000 anyway). The
  cached distribution is renormalised on use, so the KL stays >= 0. Measured on random
  1,000-token vocabularies (entropy 1-6 nats): identical logits give a KL of <= 1e-6
  (float16) / <= 5e-5 (bfloat16) instead of 0, and a KL of 0.2-0.5 is off by <= 1e-4
  (float16) / <= 2e-4 (bfloat16) relative: far below the gaps the search ranks by.
- **top-k**: the k largest dense log-probs (compact dtype), their token ids (int32) and
  the log of the remaining mass (fp32). Memory is O(n k) instead of O(n vocab), which
  is what makes 100K tokens x 128K vocabularies fit. The KL is then taken over k + 1
  buckets (the k tokens and "the rest"); merging tokens into one bucket can only lower
  a KL (data processing), so top-k KL <= full KL, it grows with k and equals the full
  KL at k = vocab. It is close when the dense distribution is peaked (little mass
  outside the top-k).

All computation is in fp32 on the logits' device, in chunks of tokens, so bf16 logits
and large vocabularies need no more than a few fp32 temporaries of ``chunk x vocab``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CHUNK_ELEMENTS = 1 << 24  # per fp32 temporary: 64 MiB


@dataclass
class DenseTargets:
    """Cached dense next-token distributions of ``n`` tokens (full or top-k).

    ``values``: ``[n, vocab]`` log-probs (full) or ``[n, k]`` top-k log-probs;
    ``indices``: ``[n, k]`` token ids of the top-k (None for full);
    ``log_rest``: ``[n]`` log of the mass outside the top-k (None for full).
    Sliceable by token (``targets[a:b]``, an index tensor or list).
    """

    values: Tensor
    vocab_size: int
    indices: Tensor | None = None
    log_rest: Tensor | None = None

    def __post_init__(self) -> None:
        if self.values.dim() != 2:
            raise ValueError(
                f"values must be [tokens, k], got {tuple(self.values.shape)}"
            )
        if (self.indices is None) != (self.log_rest is None):
            raise ValueError("top-k targets need both indices and log_rest")
        n, width = self.values.shape
        if self.indices is None:
            if width != self.vocab_size:
                raise ValueError(
                    f"full targets have {width} columns, vocab {self.vocab_size}"
                )
        elif self.indices.shape != self.values.shape or self.log_rest.shape != (n,):
            raise ValueError("top-k values, indices and log_rest disagree in shape")

    @property
    def is_topk(self) -> bool:
        return self.indices is not None

    @property
    def k(self) -> int | None:
        return self.values.shape[1] if self.is_topk else None

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> DenseTargets:
        """The targets of a subset of tokens (a slice is a view, no copy)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        elif not isinstance(index, (slice, Tensor)):
            index = torch.as_tensor(index, dtype=torch.long)
        if isinstance(index, Tensor):
            index = index.to(self.values.device)
        return DenseTargets(
            self.values[index],
            self.vocab_size,
            None if self.indices is None else self.indices[index],
            None if self.log_rest is None else self.log_rest[index],
        )

    @classmethod
    def cat(cls, parts: Sequence[DenseTargets]) -> DenseTargets:
        """Join targets computed batch by batch (all full, or all top-k with one k)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        if any(
            p.vocab_size != first.vocab_size
            or p.is_topk != first.is_topk
            or p.k != first.k
            for p in parts
        ):
            raise ValueError("targets differ in vocabulary, kind or k")
        return cls(
            torch.cat([p.values for p in parts]),
            first.vocab_size,
            None if not first.is_topk else torch.cat([p.indices for p in parts]),
            None if not first.is_topk else torch.cat([p.log_rest for p in parts]),
        )

    def to(self, device: torch.device | str) -> DenseTargets:
        return DenseTargets(
            self.values.to(device),
            self.vocab_size,
            None if self.indices is None else self.indices.to(device),
            None if self.log_rest is None else self.log_rest.to(device),
        )

    @property
    def nbytes(self) -> int:
        tensors = [self.values, self.indices, self.log_rest]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _flat(logits: Tensor) -> Tensor:
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., vocab], got {tuple(logits.shape)}")
    return logits.reshape(-1, logits.shape[-1])


def tokens_per_chunk(vocab: int) -> int:
    """Tokens whose ``[tokens, vocab]`` fp32 temporary holds ``CHUNK_ELEMENTS``."""
    return max(1, CHUNK_ELEMENTS // vocab)


def _chunk(vocab: int, chunk_tokens: int | None) -> int:
    return chunk_tokens if chunk_tokens else tokens_per_chunk(vocab)


def chunked_logits(model: nn.Module, ids: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(first token, ``[chunk, vocab]`` logits) over the flattened tokens of ``ids``.

    The LM head runs one chunk at a time, so the logits never exist whole: 4 windows
    x 4096 tokens x 128K vocabulary would be 4 GB in bf16, before any fp32 copy.
    """
    hidden = model.base_model(ids, use_cache=False).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    head = model.get_output_embeddings()
    step = tokens_per_chunk(model.config.vocab_size)
    for start in range(0, len(flat), step):
        yield start, head(flat[start : start + step])


def dense_targets(
    logits: Tensor,
    topk: int | None = None,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str | None = "cpu",
    chunk_tokens: int | None = None,
) -> DenseTargets:
    """What to cache of the dense model's logits ``[..., vocab]`` (flattened to tokens).

    ``topk=None``: full log-probs; otherwise the top ``topk`` (capped at the vocabulary)
    and the remaining mass. ``dtype``: storage of the log-probs (module docstring for
    the error). ``device``: where the cache lives; CPU by default because a full cache
    is large (100K tokens x 128K vocab = 26 GB in float16) and :func:`kl_per_token`
    moves one chunk at a time to the logits' device. ``None``: the logits' device.
    """
    flat = _flat(logits)
    n, vocab = flat.shape
    device = flat.device if device is None else torch.device(device)
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    k = None if topk is None else min(int(topk), vocab)
    width = vocab if k is None else k
    values = torch.empty(n, width, dtype=dtype, device=device)
    indices = None if k is None else torch.empty(n, k, dtype=torch.int32, device=device)
    log_rest = None if k is None else torch.empty(n, dtype=torch.float32, device=device)
    step = _chunk(vocab, chunk_tokens)
    with torch.no_grad():
        for start in range(0, n, step):
            stop = min(start + step, n)
            lp = torch.log_softmax(flat[start:stop].float(), dim=-1)
            if k is None:
                values[start:stop] = lp.to(dtype)
                continue
            top, idx = lp.topk(k, dim=-1)
            values[start:stop] = top.to(dtype)
            indices[start:stop] = idx.to(torch.int32)
            log_rest[start:stop] = lp.scatter_(1, idx, float("-inf")).logsumexp(dim=-1)
    return DenseTargets(values, vocab, indices, log_rest)


def _plogratio(lp: Tensor, lq: Tensor) -> Tensor:
    """``p (log p - log q)`` elementwise, with 0 where p = 0 (0 log 0 = 0)."""
    return torch.where(lp > float("-inf"), lp.exp() * (lp - lq), lp.new_zeros(()))


def kl_per_token(
    targets: DenseTargets, pruned_logits: Tensor, *, chunk_tokens: int | None = None
) -> Tensor:
    """KL(P_dense || P_pruned) of every token, fp32 ``[n]`` on the logits' device.

    Differentiable in the logits (distillation trains through it); callers that only
    score wrap it in ``torch.no_grad()``.
    """
    flat = _flat(pruned_logits)
    n, vocab = flat.shape
    if n != len(targets) or vocab != targets.vocab_size:
        raise ValueError(
            f"pruned logits are {n} tokens x {vocab}, the targets {len(targets)} x "
            f"{targets.vocab_size}"
        )
    device = flat.device
    parts = []
    step = _chunk(vocab, chunk_tokens)
    for start in range(0, n, step):
        stop = min(start + step, n)
        lq = torch.log_softmax(flat[start:stop].float(), dim=-1)
        part = targets[start:stop]
        values = part.values.to(device).float()
        if not part.is_topk:
            lp = values - values.logsumexp(dim=-1, keepdim=True)
            parts.append(_plogratio(lp, lq).sum(dim=-1))
            continue
        # Renormalise the k + 1 dense buckets (the cached values are rounded).
        lp = torch.cat([values, part.log_rest.to(device).float()[:, None]], dim=1)
        lp = lp - lp.logsumexp(dim=-1, keepdim=True)
        idx = part.indices.to(device).long()
        lq_top = lq.gather(1, idx)
        lq_rest = lq.scatter(1, idx, float("-inf")).logsumexp(dim=-1)
        lq = torch.cat([lq_top, lq_rest[:, None]], dim=1)
        parts.append(_plogratio(lp, lq).sum(dim=-1))
    return torch.cat(parts)


def kl_divergence(
    targets: DenseTargets, pruned_logits: Tensor, *, chunk_tokens: int | None = None
) -> Tensor:
    """Mean over tokens of KL(P_dense || P_pruned) (lower is better)."""
    return kl_per_token(targets, pruned_logits, chunk_tokens=chunk_tokens).mean()
