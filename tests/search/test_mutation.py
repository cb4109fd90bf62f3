"""The level-switch mutation: paper flips on even ladders, the budget on ragged ones."""

from __future__ import annotations

import random

import pytest

from darwin_modifier.search.budget import Budget, for_target, initial_genome
from darwin_modifier.search.genome import MODULES, Genome, uniform
from darwin_modifier.search.mutation import MutationError, mutate
from tests.search.test_budget import even_table, is_tight, ragged_table

# ---- mutation ------------------------------------------------------------------------


def test_mutation_on_even_ladders_is_the_papers_level_switch():
    budget = Budget(even_table())
    parent = uniform(5, 6).with_level("mlp", 0, 3).with_level("mlp", 1, 7)
    rng = random.Random(0)
    mlp_changes = attn_changes = 0
    for _ in range(300):
        child = mutate(parent, rng, budget)
        assert child != parent
        assert budget.params(child) == budget.params(parent)
        for module in MODULES:  # the level sum per group never changes
            assert sum(child.levels(module)) == sum(parent.levels(module))
        changed = parent.changed(child)
        assert 2 <= len(changed) <= 6
        mlp_changes += sum(m == "mlp" for m, _ in changed)
        attn_changes += sum(m == "attn" for m, _ in changed)
    # groups are picked in proportion to their size: MLP is 3x attention
    assert 0.65 < mlp_changes / (mlp_changes + attn_changes) < 0.85


def test_number_of_flips_is_min_of_two_uniforms():
    budget = Budget(even_table(40))
    parent = uniform(5, 40)
    rng = random.Random(1)
    counts = {1: 0, 2: 0, 3: 0}
    for _ in range(600):
        child = mutate(parent, rng, budget)
        moved = sum(
            abs(a - b)
            for m in MODULES
            for a, b in zip(parent.levels(m), child.levels(m))
        )
        if moved % 2 == 0 and moved // 2 in counts:  # coinciding flips may cancel
            counts[moved // 2] += 1
    total = sum(counts.values())
    # P(1) = 5/9, P(2) = 3/9, P(3) = 1/9
    assert abs(counts[1] / total - 5 / 9) < 0.07
    assert abs(counts[3] / total - 1 / 9) < 0.05


def test_mutation_is_deterministic_given_the_rng_state():
    budget = Budget(ragged_table())
    parent = initial_genome(budget, level=5)
    rng = random.Random(42)
    state = rng.getstate()
    first = [mutate(parent, rng, budget) for _ in range(5)]
    rng.setstate(state)
    assert [mutate(parent, rng, budget) for _ in range(5)] == first
    assert len(set(first)) > 1


@pytest.mark.parametrize("slack", [0, 5000, 60000])
def test_mutation_on_ragged_ladders_holds_the_parameter_budget(slack):
    budget = Budget(ragged_table())
    target = budget.uniform_params(5) + slack
    parent = for_target(budget, target)
    rng = random.Random(slack)
    for _ in range(200):
        child = mutate(parent, rng, budget, max_cost=target)
        assert budget.params(child) <= target
        assert is_tight(budget, child, target)
        assert child == budget.canonical(child) and child != parent
        parent = child  # walk: the budget holds along the search, not only one step


def query_mode_table(n: int = 8, seed: int = 0) -> dict[str, list[list[int]]]:
    """Query-only GQA: attention costs differ per layer (dead KV heads), MLP rounds."""
    rng = random.Random(seed)
    head = 2 * 64 * 16
    attn = []
    for _ in range(n):
        row = []
        for q in [32, 29, 26, 22, 19, 16, 13, 10, 6, 3, 0]:
            kv = 0 if q == 0 else min(8, q // 4 + rng.randint(0, 3))
            row.append(min([q * head + kv * head, *row]))
        attn.append(row)
    mlp = [
        3 * 64 * c for c in [1536, 1376, 1216, 1088, 928, 768, 608, 448, 320, 160, 0]
    ]
    return {"attn": attn, "mlp": [mlp] * n}


def test_a_neutral_walk_does_not_drift_between_groups_or_below_budget():
    """Mutation alone (no selection) must not move parameters from MLP to attention."""
    budget = Budget(query_mode_table())
    target = budget.uniform_params(5)
    genome = for_target(budget, target)
    share = budget.group_params(genome, "attn") / budget.params(genome)
    rng = random.Random(0)
    slacks = []
    for _ in range(400):
        genome = mutate(genome, rng, budget, max_cost=target)
        slacks.append(target - budget.params(genome))
        assert slacks[-1] >= 0 and is_tight(budget, genome, target)
    head = (
        2 * 64 * 16
    )  # a neutral walk's slack stays below a few heads (no sqrt(t) drift)
    assert max(slacks) <= 4 * head and sum(slacks) / len(slacks) < head
    assert (
        abs(budget.group_params(genome, "attn") / budget.params(genome) - share) < 0.05
    )


def test_repeated_counts_never_give_a_physically_equal_child():
    budget = Budget(ragged_table())
    parent = budget.canonical(uniform(5, 6))
    rng = random.Random(3)
    for _ in range(100):
        child = mutate(parent, rng, budget, max_cost=budget.params(parent))
        assert budget.canonical(child) != parent
        assert any(
            budget.module_params(m, i, child.levels(m)[i])
            != budget.module_params(m, i, parent.levels(m)[i])
            for m, i in parent.changed(child)
        )


def test_duplicates_are_redrawn_until_exhausted():
    budget = Budget({m: [[30, 20, 10, 0]] * 3 for m in MODULES})
    parent = uniform(1, 3)
    rng = random.Random(7)
    seen: set[Genome] = set()
    with pytest.raises(MutationError, match="excluded"):
        for _ in range(100):
            child = mutate(parent, rng, budget, exclude=seen, max_tries=300)
            assert child not in seen and child != parent
            assert budget.params(child) == budget.params(parent)
            seen.add(child)
    assert 10 < len(seen) < 100


def test_nothing_to_mutate():
    budget = Budget(even_table())
    with pytest.raises(MutationError, match="nothing to mutate"):
        mutate(uniform(0, 6), random.Random(0), budget)  # everything dense
    one = Budget(even_table(1))
    with pytest.raises(MutationError, match="nothing to mutate"):
        mutate(uniform(5, 1), random.Random(0), one)  # no second module to switch with


def test_a_parent_where_every_switch_overshoots_still_mutates():
    """MLP at a level whose step down adds 160 channels and step up removes 128."""
    table = {
        "attn": [[0, 0]] * 4,
        "mlp": [[1536, 1376, 1216, 1088, 928, 0]] * 4,
    }
    budget = Budget(table)
    parent = Genome((0,) * 4, (2,) * 4)
    target = budget.params(parent)
    rng = random.Random(0)
    children = {mutate(parent, rng, budget, max_cost=target) for _ in range(50)}
    assert len(children) > 3
    for child in children:
        assert budget.params(child) <= target and is_tight(budget, child, target)
