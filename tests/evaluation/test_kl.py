"""KL(P_dense || P_pruned) against cached dense targets, full and top-k."""

from __future__ import annotations

import pytest
import torch

from darwin_modifier.evaluation.kl import (
    DenseTargets,
    dense_targets,
    kl_divergence,
    kl_per_token,
)

N, VOCAB = 96, 1000


def logits_pair(seed: int = 0, scale: float = 3.0, noise: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(N, VOCAB, generator=g) * scale
    return dense, dense + torch.randn(N, VOCAB, generator=g) * noise


def reference_kl(dense: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Per-token KL in float64, straight from the definition."""
    lp = torch.log_softmax(dense.double(), -1)
    lq = torch.log_softmax(pruned.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def test_identical_logits_give_zero():
    dense, _ = logits_pair()
    for targets, tol in [
        (dense_targets(dense, dtype=torch.float32), 1e-6),
        (dense_targets(dense), 1e-5),
        (dense_targets(dense, dtype=torch.bfloat16), 1e-3),
        (dense_targets(dense, topk=16), 1e-5),
    ]:
        per_token = kl_per_token(targets, dense)
        assert per_token.shape == (N,) and per_token.dtype == torch.float32
        assert per_token.abs().max() < tol
        assert per_token.min() > -1e-6  # renormalised targets: KL >= 0 up to rounding


def test_full_kl_matches_a_float64_reference():
    dense, pruned = logits_pair()
    ref = reference_kl(dense, pruned)
    assert ref.mean() > 0.1  # a real difference, not a rounding test
    exact = kl_per_token(dense_targets(dense, dtype=torch.float32), pruned)
    torch.testing.assert_close(exact.double(), ref, rtol=1e-5, atol=1e-6)
    fp16 = kl_divergence(dense_targets(dense), pruned)
    assert abs(fp16.item() / ref.mean().item() - 1) < 1e-3
    bf16 = kl_divergence(dense_targets(dense, dtype=torch.bfloat16), pruned)
    assert abs(bf16.item() / ref.mean().item() - 1) < 1e-2
    assert kl_divergence(dense_targets(dense), pruned).ndim == 0


def test_bf16_logits_are_computed_in_fp32():
    dense, pruned = logits_pair(1)
    d16, p16 = dense.bfloat16(), pruned.bfloat16()
    ref = reference_kl(d16.float(), p16.float()).mean()
    got = kl_divergence(dense_targets(d16, dtype=torch.float32), p16)
    assert abs(got.item() / ref.item() - 1) < 1e-5


def test_topk_grows_to_the_full_kl():
    dense, pruned = logits_pair(2)
    full = reference_kl(dense, pruned).mean().item()
    previous = 0.0
    for k in [1, 4, 16, 64, 256, 999, VOCAB, 5 * VOCAB]:
        targets = dense_targets(dense, topk=k, dtype=torch.float32)
        value = kl_divergence(targets, pruned).item()
        assert value <= full * (1 + 1e-5)  # merging tokens can only lower the KL
        assert value >= previous - 1e-6  # and a finer partition raises it
        previous = value
    assert targets.k == VOCAB and torch.isneginf(targets.log_rest).all()
    assert abs(previous / full - 1) < 1e-5


def test_topk_is_close_on_peaked_distributions():
    g = torch.Generator().manual_seed(3)
    dense = torch.randn(N, VOCAB, generator=g)
    hot = torch.randint(0, VOCAB, (N, 8), generator=g)
    dense.scatter_(1, hot, torch.randn(N, 8, generator=g) + 12.0)  # ~all mass on 8
    pruned = dense + torch.randn(N, VOCAB, generator=g) * 0.5
    full = reference_kl(dense, pruned).mean().item()
    approx = kl_divergence(dense_targets(dense, topk=32), pruned).item()
    assert abs(approx / full - 1) < 0.02
    # with the mass spread out instead, a small k loses much of the KL
    flat, flat_pruned = logits_pair(3, scale=0.5)
    assert kl_divergence(dense_targets(flat, topk=32), flat_pruned) < 0.5 * (
        reference_kl(flat, flat_pruned).mean()
    )


def test_topk_memory_is_o_of_k():
    dense, _ = logits_pair()
    full, top = dense_targets(dense), dense_targets(dense, topk=16)
    assert full.nbytes == N * VOCAB * 2
    assert top.nbytes == N * 16 * (2 + 4) + N * 4
    assert top.indices.dtype == torch.int32 and top.values.dtype == torch.float16


@pytest.mark.parametrize("topk", [None, 16])
def test_chunking_does_not_change_results(topk):
    dense, pruned = logits_pair(4)
    whole = dense_targets(dense, topk=topk)
    chunked = dense_targets(dense, topk=topk, chunk_tokens=7)
    assert torch.equal(whole.values, chunked.values)
    if topk:
        assert torch.equal(whole.indices, chunked.indices)
        assert torch.equal(whole.log_rest, chunked.log_rest)
    torch.testing.assert_close(
        kl_per_token(whole, pruned), kl_per_token(whole, pruned, chunk_tokens=5)
    )


def test_leading_dims_are_flattened_into_tokens():
    dense, pruned = logits_pair(5)
    targets = dense_targets(dense.view(4, N // 4, VOCAB), topk=8)
    assert len(targets) == N
    torch.testing.assert_close(
        kl_per_token(targets, pruned.view(4, N // 4, VOCAB)),
        kl_per_token(dense_targets(dense, topk=8), pruned),
    )


@pytest.mark.parametrize("topk", [None, 16])
def test_slicing_selects_tokens(topk):
    dense, pruned = logits_pair(6)
    targets = dense_targets(dense, topk=topk)
    per_token = kl_per_token(targets, pruned)
    torch.testing.assert_close(
        kl_per_token(targets[10:30], pruned[10:30]), per_token[10:30]
    )
    picks = [3, 50, 7, 7]
    torch.testing.assert_close(
        kl_per_token(targets[picks], pruned[picks]), per_token[picks]
    )
    index = torch.tensor(picks)
    torch.testing.assert_close(
        kl_per_token(targets[index], pruned[index]), per_token[index]
    )
    assert len(targets[5]) == 1 and len(targets[-1]) == 1
    torch.testing.assert_close(kl_per_token(targets[-1], pruned[-1:]), per_token[-1:])
    joined = DenseTargets.cat([targets[:40], targets[40:]])
    assert torch.equal(joined.values, targets.values)
    torch.testing.assert_close(kl_per_token(joined, pruned), per_token)


def test_full_kl_gradient_is_softmax_minus_dense():
    """Distillation trains through this KL: d KL / d logits = q - p per token."""
    dense, pruned = logits_pair(7)
    pruned.requires_grad_(True)
    targets = dense_targets(dense, dtype=torch.float32)
    kl_divergence(targets, pruned).backward()
    expected = (pruned.detach().softmax(-1) - dense.softmax(-1)) / len(pruned)
    torch.testing.assert_close(pruned.grad, expected, atol=1e-7, rtol=1e-4)


def test_masked_vocabulary_entries():
    dense, pruned = logits_pair(8)
    dense[:, -10:] = float("-inf")  # e.g. padded vocabulary rows
    pruned[:, -10:] = float("-inf")
    for topk in [None, 16, VOCAB]:
        targets = dense_targets(dense, topk=topk)
        value = kl_divergence(targets, pruned)
        assert torch.isfinite(value) and value > 0
    impossible = pruned.clone()
    impossible[0, dense[0].argmax()] = float("-inf")  # pruned rules out a likely token
    assert torch.isinf(kl_per_token(dense_targets(dense), impossible)[0])


def test_mismatched_shapes_are_refused():
    dense, pruned = logits_pair()
    targets = dense_targets(dense, topk=4)
    with pytest.raises(ValueError, match="tokens"):
        kl_divergence(targets, pruned[:-1])
    with pytest.raises(ValueError, match="tokens"):
        kl_divergence(targets, pruned[:, :-1])
    with pytest.raises(ValueError, match="differ"):
        DenseTargets.cat([targets, dense_targets(dense)])
    with pytest.raises(ValueError, match="topk"):
        dense_targets(dense, topk=0)
