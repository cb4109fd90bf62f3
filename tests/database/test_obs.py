"""The OBS trajectory against its closed form: each level is the damped LS fit."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from darwin_modifier.database.obs import (
    group_columns,
    hessian_damped,
    obs_prune_trajectory,
)


def problem(out=8, n=24, rows=64, seed=0, dtype=torch.float64):
    """A random layer and input Hessian with uneven input scales and correlations."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, n, generator=gen, dtype=torch.float64)
    X = X * torch.exp(torch.randn(n, generator=gen, dtype=torch.float64))
    X = X @ (torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=gen))
    W = torch.randn(out, n, generator=gen, dtype=torch.float64)
    return W.to(dtype), (2 / rows * X.T @ X).to(dtype), X


def least_squares(W, Hd, cols):
    """The optimum of tr((W' - W) Hd (W' - W)ᵀ) over W' supported on ``cols``."""
    return W @ Hd[:, cols] @ torch.linalg.inv(Hd[cols][:, cols])


def output_error(W, H, cols, weight):
    full = torch.zeros_like(W)
    full[:, cols] = weight
    diff = full - W
    return float(((diff @ H) * diff).sum())


@pytest.mark.parametrize("group_size", [1, 4])
def test_every_level_is_the_least_squares_optimum(group_size):
    W, H, _ = problem()
    n_groups = W.shape[1] // group_size
    counts = list(range(n_groups, -1, -1))
    levels = obs_prune_trajectory(W, H, group_size, counts)
    Hd, _ = hessian_damped(H)
    assert [lv.keep for lv in levels] == counts
    for lv in levels[1:-1]:
        assert lv.kept.tolist() == sorted(set(lv.kept.tolist()))
        cols = group_columns(lv.kept, group_size)
        assert lv.weight.shape == (W.shape[0], lv.keep * group_size)
        torch.testing.assert_close(
            lv.weight, least_squares(W, Hd, cols), rtol=1e-9, atol=1e-9
        )
        assert lv.loss == pytest.approx(output_error(W, H, cols, lv.weight), rel=1e-9)
        assert lv.obs_loss == pytest.approx(
            output_error(W, Hd, cols, lv.weight), rel=1e-9
        )


@pytest.mark.parametrize("group_size", [1, 3])
def test_levels_are_nested_and_errors_grow(group_size):
    W, H, _ = problem(seed=1)
    n_groups = W.shape[1] // group_size
    levels = obs_prune_trajectory(W, H, group_size, list(range(n_groups, -1, -1)))
    for bigger, smaller in pairwise(levels):
        assert set(smaller.kept.tolist()) < set(bigger.kept.tolist())
        assert smaller.obs_loss > bigger.obs_loss
        assert smaller.loss >= bigger.loss


def test_dense_and_empty_ends():
    W, H, _ = problem(dtype=torch.float32)
    dense, empty = obs_prune_trajectory(W, H, 1, [24, 0])
    assert torch.equal(dense.weight, W) and dense.weight.data_ptr() != W.data_ptr()
    assert dense.kept.tolist() == list(range(24))
    assert dense.loss == 0.0 and dense.obs_loss == 0.0
    assert empty.weight.shape == (8, 0) and empty.kept.numel() == 0
    assert empty.loss == pytest.approx(float(((W @ H) * W).sum()), rel=1e-5)


def test_order_duplicates_and_dtypes():
    W, H, _ = problem()
    ref = {lv.keep: lv for lv in obs_prune_trajectory(W, H, 2, [12, 7, 3, 0])}
    levels = obs_prune_trajectory(W.to(torch.bfloat16), H.float(), 2, [3, 7, 3])
    assert [lv.keep for lv in levels] == [3, 7, 3]
    for lv in levels:
        assert lv.weight.dtype == torch.bfloat16
        assert torch.equal(lv.kept, ref[lv.keep].kept)


def test_float32_matches_float64_on_a_bigger_problem():
    W, H, _ = problem(out=32, n=256, rows=512, seed=2)
    counts = [200, 128, 40, 1]
    exact = obs_prune_trajectory(W, H, 1, counts)
    fast = obs_prune_trajectory(W.float(), H.float(), 1, counts, exact_loss=False)
    for a, b in zip(exact, fast, strict=True):
        assert torch.equal(a.kept, b.kept)
        torch.testing.assert_close(b.weight.double(), a.weight, rtol=1e-3, atol=1e-4)
        assert b.loss == pytest.approx(a.loss, rel=1e-3)


def test_dead_input_is_removed_first_without_nans():
    W, _, X = problem(seed=3)
    X[:, 5] = 0.0
    H = 2 / X.shape[0] * X.T @ X
    Hd, dead = hessian_damped(H)
    assert dead.tolist() == [i == 5 for i in range(24)]
    assert Hd[5, 5] > 1.0 and torch.equal(Hd[5, :5], H[5, :5])
    for dtype in (torch.float64, torch.float32):
        levels = obs_prune_trajectory(
            W.to(dtype), H.to(dtype), 1, list(range(23, 0, -1))
        )
        assert 5 not in levels[0].kept.tolist()
        for lv in levels:
            assert torch.isfinite(lv.weight).all()
            assert torch.isfinite(torch.tensor([lv.loss, lv.obs_loss])).all()


def test_hessian_damped_leaves_input_alone():
    H = torch.diag(torch.tensor([2.0, 0.0, 4.0]))
    Hd, dead = hessian_damped(H, damp=0.1)
    assert H[1, 1] == 0.0
    assert dead.tolist() == [False, True, False]
    mean = (2.0 + 1.0 + 4.0) / 3
    torch.testing.assert_close(
        Hd.diagonal(), torch.tensor([2.0, 1.0, 4.0]) + 0.1 * mean
    )


def test_obs_beats_magnitude_pruning():
    W, H, _ = problem(seed=4)
    (level,) = obs_prune_trajectory(W, H, 1, [12])
    by_norm = W.norm(dim=0).argsort(descending=True)[:12].sort().values
    magnitude = output_error(W, H, by_norm, W[:, by_norm])
    assert level.loss < 0.5 * magnitude


@pytest.mark.parametrize(
    ("shape", "group_size", "counts"),
    [
        ((8, 24), 5, [1]),  # group size does not divide the width
        ((8, 24), 0, [1]),
        ((8, 24), 4, [7]),  # more groups than exist
        ((8, 24), 4, [-1]),
        ((8, 24), 4, [2.5]),
    ],
)
def test_bad_arguments(shape, group_size, counts):
    W, H, _ = problem()
    with pytest.raises(ValueError):
        obs_prune_trajectory(W, H, group_size, counts)


def test_shape_mismatch():
    W, H, _ = problem()
    with pytest.raises(ValueError, match="H has shape"):
        obs_prune_trajectory(W, H[:-1, :-1], 1, [3])
    with pytest.raises(ValueError, match="damp"):
        hessian_damped(H, damp=-1.0)
