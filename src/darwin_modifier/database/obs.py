"""Second-order (OBS, ZipLM-style) structured pruning of a layer's input columns.

Pure tensor math, no model code. A layer ``y = x Wᵀ`` with calibration inputs ``x`` has
the output reconstruction loss ``L(W') = tr((W' - W) H (W' - W)ᵀ)`` with
``H = 2/N Σ xᵀx``. Removing input columns and re-fitting the rest is a least-squares
problem; the greedy OBS trajectory removes one *group* of consecutive columns at a
time (one column = one MLP channel of ``down_proj``; ``head_dim`` columns = one query
head of ``o_proj``; ``head_dim * q_per_kv`` columns = one whole KV group) and applies
the optimal compensating update to the remaining columns.

All math runs in fp32 (fp64 when ``H`` is fp64, which the tests use), on ``H``'s device.

Complexity of :func:`obs_prune_trajectory` with ``n`` input columns, ``o`` output rows,
group size ``g`` and ``m = n / g`` groups: a removal step with ``k`` columns stored
costs ``O(k (k + o) g)`` (rank-``g`` updates of ``Hinv`` and ``W``, memory bound) plus
the scoring, ``O(k o)`` for ``g = 1`` and ``O(m g² (g + o))`` for blocks. Storage is
compacted to the live columns (with an exact re-solve, which also stops fp32 drift)
whenever half of it is dead, so pruning all columns costs about ``n³/3 + o n²/2``
multiply-adds in updates plus ``O(n³ + o n²)`` at matmul/Cholesky speed in re-solves.
A snapshot with the exact undamped loss costs one ``o × n × n`` matmul.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PrunedLevel",
    "group_columns",
    "hessian_damped",
    "obs_prune_trajectory",
]

# Re-solve (and compact) once the live columns are at most this fraction of the stored
# ones: halves the work of later steps and resets the rank-1 update drift.
_COMPACT_FRACTION = 0.5


@dataclass(frozen=True)
class PrunedLevel:
    """One snapshot of the greedy trajectory: ``keep`` groups survive.

    ``kept`` holds sorted dense group indices; ``weight`` is ``W`` restricted to the
    kept columns (``out × keep * group_size``, the input's dtype and device) after the
    OBS update. ``loss`` is the layer output reconstruction error
    ``tr((W_pruned - W) H (W_pruned - W)ᵀ)`` with the *undamped* ``H`` (dead inputs
    contribute nothing); ``obs_loss`` is the sum of the greedy OBS scores so far, which
    equals the same error under the *damped* ``H``.
    """

    keep: int
    kept: Tensor
    weight: Tensor
    loss: float
    obs_loss: float


def group_columns(kept: Tensor, group_size: int) -> Tensor:
    """Column indices covered by the (dense) group indices ``kept``, in order."""
    kept = torch.as_tensor(kept, dtype=torch.long)
    offsets = torch.arange(group_size, device=kept.device)
    return (kept[:, None] * group_size + offsets).reshape(-1)


def _compute_dtype(H: Tensor) -> torch.dtype:
    return torch.float64 if H.dtype == torch.float64 else torch.float32


def hessian_damped(H: Tensor, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """Make an accumulated input Hessian safely invertible.

    Inputs that never fire (``H_ii == 0``) get ``H_ii = 1``, so the matrix stays
    positive definite; the returned boolean ``dead`` mask tells the caller that those
    weight columns must be zeroed (they cannot affect the output). Then
    ``damp · mean(diag H)`` is added to the diagonal, as in GPTQ/ZipLM. Returns
    ``(H_damped, dead)``; ``H`` itself is not modified.
    """
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be a square matrix, got shape {tuple(H.shape)}")
    if not math.isfinite(damp) or damp < 0:
        raise ValueError(f"damp must be a finite non-negative number, got {damp}")
    Hd = H.to(dtype=_compute_dtype(H), copy=True)
    if not torch.isfinite(Hd).all():
        raise ValueError("H contains NaN or inf")
    diag = Hd.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    diag += damp * diag.mean()
    return Hd, dead


def _inverse_spd(A: Tensor, what: str) -> Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise ValueError(
            f"{what} is not positive definite in {A.dtype} (Cholesky failed at "
            f"{int(info)}); increase damp"
        )
    return torch.cholesky_inverse(L)


def as_int(value: object, name: str) -> int:
    """Accept ints and int-like scalars (numpy ints), reject bools and floats."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_counts(keep_counts: Sequence[int], n_groups: int) -> list[int]:
    counts = [as_int(c, "keep count") for c in keep_counts]
    for c in counts:
        if not 0 <= c <= n_groups:
            raise ValueError(f"keep count {c} outside [0, {n_groups}]")
    return counts


def obs_prune_trajectory(
    W: Tensor,
    H: Tensor,
    group_size: int,
    keep_counts: Sequence[int],
    damp: float = 0.01,
    exact_loss: bool = True,
) -> list[PrunedLevel]:
    """Greedy structured OBS on the input columns of ``W`` (``out × in``).

    Groups are ``group_size`` consecutive columns (any divisor of ``in``). Each step
    removes the group with the least loss increase ``Σ_rows w_G Hinv_GG⁻¹ w_Gᵀ`` and
    updates the rest optimally, ``W -= W[:,G] Hinv_GG⁻¹ Hinv[G,:]``, with ``Hinv`` the
    inverse of the damped ``H`` restricted to the live columns. One trajectory serves
    all requested levels, so their kept sets are nested. Returns one
    :class:`PrunedLevel` per entry of ``keep_counts`` (same order; repeated counts share
    the snapshot). Dead input columns (see :func:`hessian_damped`) count as zero weights
    and are removed first.
    ``keep == n_groups`` returns ``W`` unchanged, ``keep == 0`` an ``out × 0`` weight.

    ``exact_loss=False`` skips the ``o × n × n`` matmul per snapshot and derives the
    undamped loss from the accumulated scores, ``obs_loss - λ ||W_pruned - W||²``, which
    is exact up to rounding.
    """
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix, got shape {tuple(W.shape)}")
    out_f, in_f = W.shape
    if H.shape != (in_f, in_f):
        raise ValueError(f"H has shape {tuple(H.shape)}, expected {(in_f, in_f)}")
    g = as_int(group_size, "group_size")
    if g < 1:
        raise ValueError(f"group_size must be positive, got {g}")
    if in_f % g:
        raise ValueError(f"group_size {g} does not divide in_features {in_f}")
    n_groups = in_f // g
    counts = _check_counts(keep_counts, n_groups)
    if not counts:
        return []

    Hd, dead = hessian_damped(H, damp)
    dtype, device = Hd.dtype, Hd.device
    lam = damp * float(Hd.diagonal().mean()) / (1.0 + damp)  # the added diagonal
    H_raw = H.to(device=device, dtype=dtype)
    W0 = W.to(device=device, dtype=dtype, copy=True)
    W0[:, dead] = 0.0

    levels: dict[int, PrunedLevel] = {}

    def snapshot(kept: Tensor, weight: Tensor, obs_loss: float) -> PrunedLevel:
        cols = group_columns(kept, g)
        full = torch.zeros_like(W0)
        full[:, cols] = weight
        diff = full - W0
        if exact_loss:
            loss = float(((diff @ H_raw) * diff).sum())
        else:
            loss = max(obs_loss - lam * float(diff.square().sum()), 0.0)
        return PrunedLevel(
            keep=int(kept.numel()),
            kept=kept.cpu(),
            weight=weight.to(device=W.device, dtype=W.dtype).contiguous(),
            loss=loss,
            obs_loss=obs_loss,
        )

    if n_groups in counts:
        levels[n_groups] = PrunedLevel(
            keep=n_groups,
            kept=torch.arange(n_groups),
            weight=W.detach().clone(),
            loss=0.0,
            obs_loss=0.0,
        )
    if 0 in counts:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        full_loss = float(((W0 @ Hd) * W0).sum())
        levels[0] = snapshot(empty, W0[:, :0], full_loss)

    targets = {c for c in counts if 0 < c < n_groups}
    if targets:
        _trajectory(W0, Hd, g, targets, snapshot, levels)
    return [levels[c] for c in counts]


def _trajectory(
    W0: Tensor,
    Hd: Tensor,
    g: int,
    targets: set[int],
    snapshot: Callable[[Tensor, Tensor, float], PrunedLevel],
    levels: dict[int, PrunedLevel],
) -> None:
    """Run the greedy removal down to ``min(targets)``, snapshotting each target."""
    out_f = W0.shape[0]
    device = Hd.device
    alive = torch.arange(Hd.shape[0] // g, device=device)  # dense ids of stored groups
    Wt = Hinv = removed = torch.empty(0)  # set by resolve()
    obs_loss = 0.0

    def resolve(groups: Tensor) -> None:
        # Exact least-squares state for the live set: Hinv_S and W H[:,S] H_SS⁻¹.
        nonlocal alive, Wt, Hinv, removed
        alive = groups
        cols = group_columns(groups, g)
        if cols.numel() == Hd.shape[0]:  # nothing removed yet: W itself
            Hinv = _inverse_spd(Hd, "damped H")
            Wt = W0.T.contiguous()  # (k, out): rows are the columns of W
        else:
            Hinv = _inverse_spd(Hd[cols][:, cols], "damped H")
            Wt = (Hinv @ (Hd[cols] @ W0.T)).contiguous()
        removed = torch.zeros(groups.numel(), dtype=torch.bool, device=device)

    resolve(alive)
    n_live = alive.numel()
    lowest = min(targets)
    while n_live > lowest:
        m = alive.numel()
        if g == 1:
            scores = Wt.square().sum(1) / Hinv.diagonal()
        else:
            idx = torch.arange(m, device=device)
            blocks = Hinv.view(m, g, m, g)[idx, :, idx, :]  # (m, g, g)
            blocks[removed] = torch.eye(g, dtype=Hinv.dtype, device=device)
            L, _ = torch.linalg.cholesky_ex(blocks)
            y = torch.linalg.solve_triangular(L, Wt.view(m, g, out_f), upper=False)
            scores = y.square().sum((1, 2))
        scores = scores.masked_fill(removed, math.inf).nan_to_num_(nan=math.inf)
        p = int(torch.argmin(scores))
        score = float(scores[p])
        if not math.isfinite(score):
            raise RuntimeError(
                "OBS scores broke down (non-finite) with "
                f"{n_live} groups left; increase damp or use float64"
            )
        obs_loss += score

        sl = slice(p * g, (p + 1) * g)
        rows = Hinv[sl].clone()  # (g, k) = Hinv[G, :]
        # x = Hinv_GG⁻¹ Hinv[G, :]
        x = rows / rows[:, sl] if g == 1 else torch.linalg.solve(rows[:, sl], rows)
        Wt.addmm_(x.T, Wt[sl].clone(), alpha=-1.0)  # W -= W[:,G] Hinv_GG⁻¹ Hinv[G,:]
        Hinv.addmm_(rows.T, x, alpha=-1.0)
        Wt[sl] = 0.0
        Hinv[sl] = 0.0
        Hinv[:, sl] = 0.0
        removed[p] = True
        n_live -= 1

        if n_live in targets:
            live = ~removed
            kept = alive[live]
            cols = torch.arange(m * g, device=device).view(m, g)[live].reshape(-1)
            levels[n_live] = snapshot(kept, Wt[cols].T, obs_loss)
        if n_live > lowest and n_live <= _COMPACT_FRACTION * m:
            resolve(alive[~removed])
