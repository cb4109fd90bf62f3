"""The parameter budget (Budget) and the initial parent (for_target, initial_genome).

The table builders and ``is_tight`` are shared with test_mutation.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from darwin_modifier.search.budget import Budget, for_target, initial_genome
from darwin_modifier.search.genome import MODULES, Genome, uniform

LEVELS = 11


def even_table(n: int = 6) -> dict[str, list[list[int]]]:
    """Evenly spaced ladders: the paper's flips keep the parameters exactly."""
    return {
        "attn": [[1000 - 100 * lv for lv in range(LEVELS)] for _ in range(n)],
        "mlp": [[3000 - 300 * lv for lv in range(LEVELS)] for _ in range(n)],
    }


def ragged_table(n: int = 6) -> dict[str, list[list[int]]]:
    """Channel-multiple rounding, per-layer GQA attention costs and repeated counts."""
    mlp_counts = [1536, 1376, 1216, 1088, 928, 768, 608, 448, 320, 160, 0]
    attn_units = [3, 3, 2, 2, 2, 2, 1, 1, 1, 0, 0]  # few KV groups: repeats
    attn_heads = [32, 29, 26, 22, 19, 16, 13, 10, 6, 3, 0]
    attn = []
    for i in range(n):
        if i % 2:
            attn.append([u * 4 * 64 * 30 + 7 * i * (u > 0) for u in attn_units])
        else:
            attn.append(
                [h * 2 * 64 * 40 + 64 * 40 * min(h, 8) // 4 for h in attn_heads]
            )
    return {"attn": attn, "mlp": [[3 * 576 * c for c in mlp_counts] for _ in range(n)]}


def is_tight(budget: Budget, genome: Genome, limit: int) -> bool:
    """No single step down (adding parameters) still fits the limit."""
    total = budget.params(genome)
    for module in MODULES:
        for i, lv in enumerate(genome.levels(module)):
            down = budget.step_down(module, i, lv)
            if (
                down is not None
                and total
                - budget.module_params(module, i, lv)
                + budget.module_params(module, i, down)
                <= limit
            ):
                return False
    return True


# ---- Budget --------------------------------------------------------------------------


def test_budget_sums_physical_params():
    budget = Budget(even_table(3))
    assert budget.dense_params() == 3 * 4000
    assert budget.group_size("mlp") == 9000
    g = Genome((0, 5, 10), (1, 1, 1))
    assert budget.params(g) == 1000 + 500 + 0 + 3 * 2700
    assert budget.uniform_params(5) == 3 * 2000
    with pytest.raises(ValueError, match="outside"):
        budget.params(Genome((0, 0, 11), (0, 0, 0)))
    with pytest.raises(ValueError, match="layers"):
        budget.params(uniform(0, 2))


def test_budget_rejects_bad_tables():
    with pytest.raises(ValueError, match="grow"):
        Budget({"attn": [[5, 6]], "mlp": [[5, 0]]})
    with pytest.raises(ValueError, match="layers"):
        Budget({"attn": [[5, 0]], "mlp": [[5, 0], [5, 0]]})
    with pytest.raises(ValueError, match="lacks"):
        Budget({"attn": [[5, 0]]})


def test_repeated_counts_are_one_block():
    row = [3, 3, 2, 2, 2, 2, 1, 1, 1, 0, 0]
    budget = Budget({"attn": [row], "mlp": [row]})
    ups = [budget.step_up("attn", 0, lv) for lv in range(11)]
    downs = [budget.step_down("attn", 0, lv) for lv in range(11)]
    assert ups == [2, 2, 6, 6, 6, 6, 9, 9, 9, None, None]
    assert downs == [None, None, 0, 0, 0, 0, 2, 2, 2, 6, 6]
    assert budget.canonical(uniform(5, 1)) == uniform(2, 1)
    assert budget.canonical(uniform(10, 1)) == uniform(9, 1)
    assert budget.is_empty(uniform(9, 1)) and not budget.is_empty(uniform(8, 1))


def test_budget_from_store_like_object():
    table = ragged_table(2)
    store = SimpleNamespace(
        shape=SimpleNamespace(num_layers=2),
        ladders={m: [0] * LEVELS for m in MODULES},
        params=lambda i, m, lv: table[m][i][lv],
    )
    budget = Budget.from_store(store)
    assert {
        m: [
            [budget.module_params(m, i, lv) for lv in range(budget.num_levels(m, i))]
            for i in range(budget.num_layers)
        ]
        for m in MODULES
    } == table


# ---- initial parent ------------------------------------------------------------------


def test_for_target_hits_uniform_levels():
    budget = Budget(even_table())
    for level in range(LEVELS - 1):
        assert for_target(budget, budget.uniform_params(level)) == uniform(level, 6)
    assert for_target(budget, budget.dense_params()) == uniform(0, 6)


@pytest.mark.parametrize("table", [even_table, ragged_table])
def test_for_target_between_levels_is_near_uniform_and_tight(table):
    budget = Budget(table())
    lo, hi = budget.uniform_params(5), budget.uniform_params(4)
    for target in [lo + 1, (lo + hi) // 2, hi - 1]:
        g = for_target(budget, target)
        assert lo <= budget.params(g) <= target
        assert is_tight(budget, g, target)
        assert g == budget.canonical(g)
        assert set(g.mlp) <= {4, 5}


def test_for_target_is_deterministic_and_fills_mlp_first_from_layer_0():
    budget = Budget(even_table(4))
    g = for_target(budget, budget.uniform_params(5) + 300)
    assert g == Genome((5, 5, 5, 5), (4, 5, 5, 5))


def test_for_target_refuses_infeasible_targets():
    budget = Budget(even_table())
    with pytest.raises(ValueError, match="above the dense"):
        for_target(budget, budget.dense_params() + 1)
    with pytest.raises(ValueError, match="too small"):
        for_target(budget, 50)  # below the cheapest block: everything removed
    floor = Budget({"attn": [[10, 5]], "mlp": [[10, 5]]})  # removed blocks still cost
    with pytest.raises(ValueError, match="below the smallest"):
        for_target(floor, 9)


def test_initial_genome():
    budget = Budget(ragged_table())
    assert initial_genome(budget, level=5) == budget.canonical(uniform(5, 6))
    assert initial_genome(ragged_table(), budget.uniform_params(3)) == budget.canonical(
        uniform(3, 6)
    )
    with pytest.raises(ValueError, match="exactly one"):
        initial_genome(budget, 10, level=5)
    with pytest.raises(ValueError, match="removes every"):
        initial_genome(budget, level=LEVELS - 1)


def test_an_extreme_target_is_described_before_the_search():
    from darwin_modifier.search.budget import removal_warning

    budget = Budget(even_table())
    for fraction, warned in [(0.5, False), (0.01, True)]:
        target = int(fraction * budget.dense_params())
        parent = initial_genome(budget, target)
        warning = removal_warning(budget, parent, target)
        assert (warning is not None) == warned
    assert "keeps 1.0% of the decoder-block parameters" in warning
    assert "removes 10 of 12 attention and MLP blocks" in warning  # 2 x 100 kept


def test_the_uniform_remainder_is_spread_over_the_depth():
    from darwin_modifier.search.budget import spread_order

    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(spread_order(30)) == list(range(30))
    budget = Budget(even_table(8))
    level = 5
    # room for four layers one level denser (an MLP and an attention step each)
    target = budget.uniform_params(level) + 4 * (300 + 100)
    parent = for_target(budget, target)
    raised = [i for i in range(8) if parent.levels("mlp")[i] < level]
    assert raised == [0, 2, 4, 6]  # evenly over the depth, not layers 0-3
    assert [i for i in range(8) if parent.levels("attn")[i] < level] == raised
    assert budget.params(parent) == target
