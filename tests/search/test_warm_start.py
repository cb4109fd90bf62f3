"""The least-error first parent: an exact knapsack over the database's levels."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from darwin_modifier.search.budget import Budget
from darwin_modifier.search.genome import MODULES, Genome
from darwin_modifier.search.warm_start import database_errors, least_error_genome
from tests.search.test_budget import ragged_table


def _random_case(seed: int, layers: int = 3, levels: int = 4):
    rng = random.Random(seed)
    table, errors = {}, {}
    for module in MODULES:
        table[module], errors[module] = [], []
        for _ in range(layers):
            params = sorted(rng.randrange(0, 1000) for _ in range(levels - 1))[::-1]
            table[module].append([1000, *params])
            errs = sorted(rng.random() for _ in range(levels - 1))
            errors[module].append([0.0, *errs])
    return Budget(table), errors


def _brute_force(budget: Budget, errors, limit: int) -> float:
    n = budget.num_layers
    ranges = [range(budget.num_levels(m, i)) for m in MODULES for i in range(n)]
    best = float("inf")
    for choice in itertools.product(*ranges):
        genome = Genome(choice[:n], choice[n:])
        if budget.cost(genome) <= limit:
            value = sum(
                errors[m][i][lv]
                for m in MODULES
                for i, lv in enumerate(genome.levels(m))
            )
            best = min(best, value)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_least_error_genome_is_the_knapsack_optimum_within_the_limit(seed):
    budget, errors = _random_case(seed)
    limit = int(0.5 * budget.dense_cost())
    genome = least_error_genome(budget, errors, limit, grid=20000)
    value = sum(
        errors[m][i][lv] for m in MODULES for i, lv in enumerate(genome.levels(m))
    )
    assert budget.cost(genome) <= limit
    assert value == pytest.approx(_brute_force(budget, errors, limit))


@pytest.mark.parametrize("seed", range(3))
def test_a_coarse_grid_loses_at_most_one_cell_per_block(seed):
    budget, errors = _random_case(seed)
    limit, grid = int(0.5 * budget.dense_cost()), 50
    genome = least_error_genome(budget, errors, limit, grid=grid)
    value = sum(
        errors[m][i][lv] for m in MODULES for i, lv in enumerate(genome.levels(m))
    )
    blocks = 2 * budget.num_layers
    assert budget.cost(genome) <= limit
    assert value <= _brute_force(budget, errors, limit - blocks * -(-limit // grid))


def test_coarse_grid_still_holds_the_limit_and_puts_error_where_it_is_cheap():
    budget = Budget(ragged_table(6))
    # later layers cheap to prune, early ones expensive
    errors = {
        m: [[lv * (10.0 if i < 3 else 0.1) for lv in range(11)] for i in range(6)]
        for m in MODULES
    }
    limit = int(0.6 * budget.dense_cost())
    genome = least_error_genome(budget, errors, limit, grid=64)
    assert budget.cost(genome) <= limit
    assert genome == budget.canonical(genome)
    assert sum(genome.mlp[3:]) > sum(genome.mlp[:3])


def test_errors_of_another_shape_and_impossible_limits_are_refused():
    budget = Budget(ragged_table(2))
    errors = {m: [[0.0] * 11 for _ in range(2)] for m in MODULES}
    with pytest.raises(ValueError, match="rows do not match"):
        least_error_genome(budget, {**errors, "mlp": [[0.0] * 3] * 2}, 10**6)
    with pytest.raises(ValueError, match="limit must be > 0"):
        least_error_genome(budget, errors, 0)
    smallest = budget.cost(Genome((10, 10), (10, 10)))
    with pytest.raises(ValueError, match="every block would go"):
        least_error_genome(budget, errors, smallest + 1)


def test_database_errors_reads_every_level_of_every_layer():
    stats = {
        i: {m: [{"loss": 10 * i + lv} for lv in range(3)] for m in MODULES}
        for i in range(2)
    }
    store = SimpleNamespace(
        shape=SimpleNamespace(num_layers=2), layer_stats=lambda i: stats[i]
    )
    assert database_errors(store)["mlp"] == [[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]
