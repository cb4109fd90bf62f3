"""Level ladders: fixed length, dense first, removed last, non-increasing."""

from __future__ import annotations

from itertools import pairwise

import pytest

from darwin_modifier.database.ladder import (
    MLP_CHANNEL_MULTIPLE,
    custom_ladder,
    parameter_ladder,
)


def test_paper_shapes():
    assert parameter_ladder(1536, multiple=MLP_CHANNEL_MULTIPLE) == [
        1536, 1376, 1216, 1088, 928, 768, 608, 448, 320, 160, 0,
    ]  # fmt: skip
    assert parameter_ladder(32) == [32, 29, 26, 22, 19, 16, 13, 10, 6, 3, 0]


def test_few_groups_repeat_counts_to_keep_the_length():
    assert parameter_ladder(9) == [9, 8, 7, 6, 5, 5, 4, 3, 2, 1, 0]
    assert parameter_ladder(3) == [3, 3, 2, 2, 2, 2, 1, 1, 1, 0, 0]
    assert parameter_ladder(1) == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert parameter_ladder(5, num_levels=2) == [5, 0]


@pytest.mark.parametrize("total", [1, 2, 9, 32, 100, 1000, 8960, 14336])
@pytest.mark.parametrize("num_levels", [2, 5, 11, 21])
@pytest.mark.parametrize("multiple", [1, 32])
def test_properties(total, num_levels, multiple):
    if multiple > total:
        with pytest.raises(ValueError, match="multiple"):
            parameter_ladder(total, num_levels, multiple)
        return
    ladder = parameter_ladder(total, num_levels, multiple)
    assert len(ladder) == num_levels
    assert ladder[0] == total and ladder[-1] == 0
    assert all(a >= b for a, b in pairwise(ladder))
    assert all(c % multiple == 0 for c in ladder[1:])
    for i, c in enumerate(ladder[1:-1], start=1):
        target = total * (1 - i / (num_levels - 1))
        assert abs(c - target) <= multiple / 2 or c == total
    assert custom_ladder(ladder, total) == ladder


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0,), "total_groups"),
        ((9, 1), "num_levels"),
        ((9, 11, 0), "multiple"),
        ((9, 11, 10), "multiple"),
        ((9.0,), "integer"),
        ((True,), "integer"),
    ],
)
def test_parameter_ladder_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        parameter_ladder(*args)


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([9], "at least 2"),
        ([8, 4, 0], "dense"),
        ([9, 4, 1], "remove"),
        ([9, 4, 5, 0], "non-increasing"),
        ([9, 4.5, 0], "integer"),
    ],
)
def test_custom_ladder_rejects(counts, match):
    with pytest.raises(ValueError, match=match):
        custom_ladder(counts, 9)


def test_custom_ladder_accepts_repeats_and_int_likes():
    import numpy as np

    assert custom_ladder([np.int64(9), 9, 6, 6, 0], 9) == [9, 9, 6, 6, 0]
    assert all(type(c) is int for c in custom_ladder((np.int32(2), 1, 0), 2))
