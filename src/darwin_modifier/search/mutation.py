"""The level-switch mutation, within a budget (parameters, or measured time).

The paper's switch keeps each group's level sum (DarwinLM, Tang et al. 2025, arXiv
2502.07780, §3), which holds the budget only on ladders evenly spaced in parameters.
Of the two departures from the paper's level arithmetic this is the mutation's (distinct
steps are in :mod:`darwin_modifier.search.budget`):

- **Flips that fit, then fill.** Ladders are not evenly spaced in parameters (channel
  multiples, GQA layouts that differ per layer), so a paper flip pair can add more than
  it removes. A flip is drawn only among the pairs that keep the child within
  ``max_cost``. Only when no pair of either group fits (e.g. every MLP at a level
  whose step down is 160 channels and step up 128) is a pair drawn among all and the
  overshoot repaired by raising random other modules of the same group. Last, the child
  is filled by lowering random modules one step (adding parameters) while it stays
  within, so every child is tight: no single step down fits. On evenly spaced ladders
  every pair fits, the flips keep the parameters exactly and, from a tight parent, the
  fill is a no-op. (Always flipping and then repairing with random modules of any group
  was tried first and dropped: MLP steps are large and attention steps small, so
  raise-MLP / fill-attention ratcheted attention back to dense in a neutral walk.)

All randomness comes from the ``random.Random`` passed in, so the search can save and
restore its state for resume.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from darwin_modifier.search.budget import Budget
from darwin_modifier.search.genome import MODULES, Genome, ParamsTable


class MutationError(RuntimeError):
    """No new child could be made (nothing to flip, or every draw was a duplicate)."""


def mutate(
    parent: Genome,
    rng: random.Random,
    params_table: Budget | ParamsTable,
    max_flips: int = 3,
    *,
    max_cost: int | None = None,
    exclude: Collection[Genome] = (),
    max_tries: int = 1000,
) -> Genome:
    """A new child by level switches that keep it within ``max_cost``.

    Flips: ``min(U{1..max_flips}, U{1..max_flips})``. Each picks a group (attn or mlp)
    with chance proportional to its dense parameters, then a uniformly random ordered
    pair of different modules of that group, one to go a step down (more params) and
    one a step up (fewer params), among the pairs that keep the child within
    ``max_cost`` (groups without one are not picked; if neither group has one, among
    all pairs, with a repair in the group). Then the fill (module docstring). Children
    equal to the parent (physically) or in ``exclude`` (compared canonically: pass what
    this module returned), and empty models, are redrawn.

    The budget is the :class:`Budget`'s cost (parameters unless it has a cost table).
    ``max_cost`` defaults to the parent's cost; the search should pass its fixed
    target, so that a child can win back what rounding took from an earlier parent.
    Returns a canonical genome. ValueError if the parent is over ``max_cost``;
    MutationError if no switch exists or after ``max_tries`` draws.
    """
    budget = Budget.coerce(params_table)
    if max_flips < 1:
        raise ValueError(f"max_flips must be >= 1, got {max_flips}")
    base = budget.canonical(parent)
    total = budget.cost(base)
    limit = total if max_cost is None else int(max_cost)
    if total > limit:
        raise ValueError(f"parent costs {total} {budget.unit}, above the limit {limit}")
    levels = {m: list(base.levels(m)) for m in MODULES}
    if not any(_pairs(budget, levels, m, None) for m in MODULES):
        raise MutationError(
            "nothing to mutate: no group has one module that can go a level down and "
            "another that can go a level up (e.g. everything dense, or a single layer)"
        )
    for _ in range(max_tries):
        child = _draw(budget, base, total, rng, max_flips, limit)
        if (
            child is not None
            and child != base
            and child not in exclude
            and not budget.is_empty(child)
        ):
            return child
    raise MutationError(
        f"no new child within {limit} {budget.unit} after {max_tries} tries: every "
        f"draw equalled the parent or an excluded genome ({len(exclude)} excluded)"
    )


def _pairs(
    budget: Budget, levels: dict[str, list[int]], module: str, slack: int | None
) -> list[tuple[int, int]]:
    """Ordered ``(down, up)`` module pairs of the group whose switch costs <= slack."""
    row = levels[module]
    cost = budget.module_cost
    downs, ups = [], []
    for i, lv in enumerate(row):
        if (d := budget.step_down(module, i, lv)) is not None:
            downs.append((i, cost(module, i, d) - cost(module, i, lv)))
        if (u := budget.step_up(module, i, lv)) is not None:
            ups.append((i, cost(module, i, lv) - cost(module, i, u)))
    return [
        (i, j)
        for i, add in downs
        for j, cut in ups
        if i != j and (slack is None or add - cut <= slack)
    ]


def _step(
    budget: Budget, levels: dict[str, list[int]], module: str, i: int, up: bool
) -> int:
    """Move one module a step up or down; returns the change in cost."""
    old = levels[module][i]
    new = (budget.step_up if up else budget.step_down)(module, i, old)
    levels[module][i] = new
    return budget.module_cost(module, i, new) - budget.module_cost(module, i, old)


def _draw(
    budget: Budget,
    base: Genome,
    total: int,
    rng: random.Random,
    max_flips: int,
    limit: int,
) -> Genome | None:
    levels = {m: list(base.levels(m)) for m in MODULES}
    flips = min(rng.randint(1, max_flips), rng.randint(1, max_flips))
    for _ in range(flips):
        options = {m: _pairs(budget, levels, m, limit - total) for m in MODULES}
        stuck = not any(options.values())
        if stuck:  # every switch overshoots: switch anyway and repair below
            options = {m: _pairs(budget, levels, m, None) for m in MODULES}
        groups = [m for m in MODULES if options[m]]
        if not groups:
            break
        weights = [budget.group_size(m) for m in groups]
        module = rng.choices(groups, weights=weights)[0] if sum(weights) else groups[0]
        down, up = rng.choice(options[module])
        total += _step(budget, levels, module, down, up=False)
        total += _step(budget, levels, module, up, up=True)
        # Repair: raise other modules, of the same group first, until within the limit.
        while total > limit:
            raisable = [
                (m, i)
                for m in MODULES
                for i, lv in enumerate(levels[m])
                if (m, i) != (module, down) and budget.step_up(m, i, lv) is not None
            ]
            same = [(m, i) for m, i in raisable if m == module]
            if not raisable:
                return None
            total += _step(budget, levels, *rng.choice(same or raisable), up=True)
    # Fill: spend what is left on single steps down, while they fit.
    while True:
        slack = limit - total
        fits = [
            (m, i)
            for m in MODULES
            for i, lv in enumerate(levels[m])
            if (d := budget.step_down(m, i, lv)) is not None
            and budget.module_cost(m, i, d) - budget.module_cost(m, i, lv) <= slack
        ]
        if not fits:
            return Genome(**levels)
        total += _step(budget, levels, *rng.choice(fits), up=False)
