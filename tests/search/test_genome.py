"""Genomes, the parameter budget, the initial parent and the level-switch mutation."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from darwin_modifier.search.genome import (
    MODULES,
    Budget,
    Genome,
    MutationError,
    for_target,
    initial_genome,
    mutate,
    uniform,
)

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


# ---- Genome --------------------------------------------------------------------------


def test_genome_is_hashable_json_and_normalises_sequences():
    g = Genome([1, 2, 3], (4, 5, 6))
    assert g.attn == (1, 2, 3) and g.mlp == (4, 5, 6) and g.num_layers == 3
    assert g == Genome((1, 2, 3), (4, 5, 6)) and g in {Genome((1, 2, 3), [4, 5, 6])}
    assert Genome.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert g.levels("mlp") == (4, 5, 6)
    h = g.with_level("mlp", 1, 9)
    assert h.mlp == (4, 9, 6) and g.mlp == (4, 5, 6)
    assert g.changed(h) == [("mlp", 1)]
    assert uniform(5, 2) == Genome((5, 5), (5, 5))


@pytest.mark.parametrize(
    "attn, mlp, error",
    [((1, 2), (1,), ValueError), ((-1,), (0,), ValueError), ((1.5,), (0,), TypeError)],
)
def test_genome_rejects_bad_levels(attn, mlp, error):
    with pytest.raises(error):
        Genome(attn, mlp)


def test_genome_from_dict_needs_both_modules():
    with pytest.raises(ValueError, match="lacks"):
        Genome.from_dict({"attn": [1]})


# ---- Budget --------------------------------------------------------------------------


def test_budget_sums_physical_params():
    budget = Budget(even_table(3))
    assert budget.dense_params() == 3 * 4000 and budget.min_params() == 0
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
    assert Budget.from_store(store).to_table() == table


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
        child = mutate(parent, rng, budget, max_params=target)
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
        genome = mutate(genome, rng, budget, max_params=target)
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
        child = mutate(parent, rng, budget, max_params=budget.params(parent))
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
    children = {mutate(parent, rng, budget, max_params=target) for _ in range(50)}
    assert len(children) > 3
    for child in children:
        assert budget.params(child) <= target and is_tight(budget, child, target)
