"""Genomes (one database level per pruned module), their budget, and the mutation.

A genome picks a level for every attention block and every MLP block. Level 0 is dense,
the last level removes the block; ``params[module][layer][level]`` is the physical
parameter count the database measured for it (non-increasing in level).

Two departures from the paper's level arithmetic, both because the budget must hold on
*parameters*, not on level sums (../shared/method.md §3):

- **Distinct steps.** Ladders may repeat counts (``[3, 3, 2, 2, ...]`` when a module has
  few units), and equal counts are the same pruned block (levels are snapshots of one
  greedy trajectory; the store keeps one entry per count). A "one level down/up" move
  therefore goes to the neighbouring level with *different* parameters, and genomes are
  kept canonical (each level is the first of its run of equal counts), so physically
  identical genomes compare equal and duplicates are caught by set membership. On a
  ladder without repeats this is exactly the paper's +-1 level.
- **Flips that fit, then fill.** Ladders are not evenly spaced in parameters (channel
  multiples, GQA layouts that differ per layer), so a paper flip pair can add more than
  it removes. A flip is drawn only among the pairs that keep the child within
  ``max_params``. Only when no pair of either group fits (e.g. every MLP at a level
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

import operator
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

MODULES = ("attn", "mlp")

ParamsTable = Mapping[str, Sequence[Sequence[int]]]
"""``table[module][layer][level]``: physical parameters of that block at that level."""


class MutationError(RuntimeError):
    """No new child could be made (nothing to flip, or every draw was a duplicate)."""


@dataclass(frozen=True)
class Genome:
    """One level per attention block and per MLP block; hashable and JSON-able."""

    attn: tuple[int, ...]
    mlp: tuple[int, ...]

    def __post_init__(self) -> None:
        for module in MODULES:
            try:
                levels = tuple(operator.index(x) for x in getattr(self, module))
            except TypeError as err:
                raise TypeError(f"{module} levels must be integers: {err}") from None
            if any(level < 0 for level in levels):
                raise ValueError(f"{module} levels must be >= 0, got {levels}")
            object.__setattr__(self, module, levels)
        if len(self.attn) != len(self.mlp):
            raise ValueError(
                f"need one attention and one MLP level per layer, got {len(self.attn)} "
                f"and {len(self.mlp)}"
            )

    @property
    def num_layers(self) -> int:
        return len(self.attn)

    def levels(self, module: str) -> tuple[int, ...]:
        if module not in MODULES:
            raise ValueError(f"unknown module {module!r}; choose one of {MODULES}")
        return getattr(self, module)

    def with_level(self, module: str, layer: int, level: int) -> Genome:
        """A copy with one module's level changed."""
        levels = list(self.levels(module))
        levels[layer] = level
        return Genome(**{**self.to_dict(), module: levels})

    def changed(self, other: Genome) -> list[tuple[str, int]]:
        """``(module, layer)`` pairs whose level differs: only those need reloading."""
        if other.num_layers != self.num_layers:
            raise ValueError("genomes have different numbers of layers")
        return [
            (module, i)
            for module in MODULES
            for i, (a, b) in enumerate(zip(self.levels(module), other.levels(module)))
            if a != b
        ]

    def to_dict(self) -> dict[str, list[int]]:
        return {module: list(self.levels(module)) for module in MODULES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[int]]) -> Genome:
        missing = [m for m in MODULES if m not in data]
        if missing:
            raise ValueError(f"genome dict lacks {missing}")
        return cls(**{module: tuple(data[module]) for module in MODULES})


def uniform(level: int, num_layers: int) -> Genome:
    """Every module at ``level``: the paper's first parent and the uniform baseline."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return Genome((level,) * num_layers, (level,) * num_layers)


class Budget:
    """The parameter table, and what the search needs from it.

    Built from ``table[module][layer][level]`` (see :data:`ParamsTable`) or from a
    database store with :meth:`from_store`.
    """

    def __init__(self, table: ParamsTable):
        missing = [m for m in MODULES if m not in table]
        if missing:
            raise ValueError(f"params table lacks {missing}")
        rows = {m: [[int(p) for p in row] for row in table[m]] for m in MODULES}
        n = len(rows["attn"])
        if n < 1 or len(rows["mlp"]) != n:
            raise ValueError(
                f"params table needs the same number (>= 1) of layers per module, got "
                f"{len(rows['attn'])} attn and {len(rows['mlp'])} mlp"
            )
        for module, layers in rows.items():
            for i, row in enumerate(layers):
                if not row or any(p < 0 for p in row):
                    raise ValueError(
                        f"{module} layer {i}: need >= 1 level, params >= 0"
                    )
                if any(b > a for a, b in zip(row, row[1:])):
                    raise ValueError(
                        f"{module} layer {i}: params must not grow with level: {row}"
                    )
        self.num_layers = n
        self._table = {m: tuple(tuple(row) for row in rows[m]) for m in MODULES}
        # Canonical level (first of its run of equal params) and the distinct steps.
        self._canon: dict[str, list[list[int]]] = {m: [] for m in MODULES}
        self._up: dict[str, list[list[int | None]]] = {m: [] for m in MODULES}
        self._down: dict[str, list[list[int | None]]] = {m: [] for m in MODULES}
        for module in MODULES:
            for row in self._table[module]:
                canon = [0] * len(row)
                for level in range(1, len(row)):
                    same = row[level] == row[level - 1]
                    canon[level] = canon[level - 1] if same else level
                up: list[int | None] = [None] * len(row)
                down: list[int | None] = [None] * len(row)
                for level in range(len(row)):
                    nxt = next(
                        (k for k in range(level, len(row)) if row[k] < row[level]), None
                    )
                    up[level] = nxt
                    first = canon[level]
                    down[level] = canon[first - 1] if first > 0 else None
                self._canon[module].append(canon)
                self._up[module].append(up)
                self._down[module].append(down)

    @classmethod
    def from_store(cls, store) -> Budget:
        """From a :class:`~darwin_modifier.database.store.DatabaseStore` (complete)."""
        n = store.shape.num_layers
        return cls(
            {
                m: [
                    [store.params(i, m, lv) for lv in range(len(store.ladders[m]))]
                    for i in range(n)
                ]
                for m in MODULES
            }
        )

    @classmethod
    def coerce(cls, value: Budget | ParamsTable) -> Budget:
        return value if isinstance(value, Budget) else cls(value)

    def to_table(self) -> dict[str, list[list[int]]]:
        """The table as plain lists (JSON-able, e.g. for the search's state file)."""
        return {m: [list(row) for row in self._table[m]] for m in MODULES}

    # ---- lookups ---------------------------------------------------------------------

    def num_levels(self, module: str, layer: int) -> int:
        return len(self._table[module][layer])

    def module_params(self, module: str, layer: int, level: int) -> int:
        return self._table[module][layer][level]

    def group_params(self, genome: Genome, module: str) -> int:
        return sum(
            self._table[module][i][level]
            for i, level in enumerate(genome.levels(module))
        )

    def params(self, genome: Genome) -> int:
        """Total decoder-block parameters of the model the genome makes."""
        self.validate(genome)
        return sum(self.group_params(genome, m) for m in MODULES)

    def group_size(self, module: str) -> int:
        """Dense parameters of the group: the weight for picking it in a flip."""
        return sum(row[0] for row in self._table[module])

    def dense_params(self) -> int:
        return sum(self.group_size(m) for m in MODULES)

    def min_params(self) -> int:
        """Every module at its last level (the all-removed model, itself not valid)."""
        return sum(row[-1] for m in MODULES for row in self._table[m])

    def uniform_params(self, level: int) -> int:
        """Parameters of the uniform model at ``level``: a natural search target."""
        return self.params(uniform(level, self.num_layers))

    # ---- structure -------------------------------------------------------------------

    def validate(self, genome: Genome) -> None:
        if genome.num_layers != self.num_layers:
            raise ValueError(
                f"genome has {genome.num_layers} layers, the params table "
                f"{self.num_layers}"
            )
        for module in MODULES:
            for i, level in enumerate(genome.levels(module)):
                if level >= self.num_levels(module, i):
                    raise ValueError(
                        f"{module} layer {i}: level {level} outside "
                        f"[0, {self.num_levels(module, i) - 1}]"
                    )

    def canonical(self, genome: Genome) -> Genome:
        """Each level moved to the first level with the same params (same block)."""
        self.validate(genome)
        return Genome(
            **{
                m: tuple(self._canon[m][i][lv] for i, lv in enumerate(genome.levels(m)))
                for m in MODULES
            }
        )

    def is_empty(self, genome: Genome) -> bool:
        """Whether every module is removed (at its last params): not a usable model."""
        self.validate(genome)
        return all(
            self._table[m][i][lv] == self._table[m][i][-1]
            for m in MODULES
            for i, lv in enumerate(genome.levels(m))
        )

    def step_up(self, module: str, layer: int, level: int) -> int | None:
        """The next level with fewer params (prune more), or None at the top."""
        return self._up[module][layer][level]

    def step_down(self, module: str, layer: int, level: int) -> int | None:
        """The canonical previous level with more params (prune less), or None at 0."""
        return self._down[module][layer][level]


# ---- initial parent ------------------------------------------------------------------


def for_target(params_table: Budget | ParamsTable, target_params: int) -> Genome:
    """The densest near-uniform genome with ``params <= target_params``.

    Start from the smallest uniform level that fits the target, then lower single
    modules (add parameters) in passes over the layers, MLP then attention from layer 0,
    while the target still holds. Deterministic; the result is canonical. ValueError if
    the target is above the dense model or too small to keep anything.
    """
    budget = Budget.coerce(params_table)
    target = int(target_params)
    if target > budget.dense_params():
        raise ValueError(
            f"target {target} is above the dense model's {budget.dense_params()} "
            "decoder-block parameters"
        )
    n = budget.num_layers
    common = min(budget.num_levels(m, i) for m in MODULES for i in range(n))
    fitting = [lv for lv in range(common) if budget.uniform_params(lv) <= target]
    if fitting:
        levels = {m: [fitting[0]] * n for m in MODULES}
    else:
        levels = {m: [budget.num_levels(m, i) - 1 for i in range(n)] for m in MODULES}
    genome = budget.canonical(Genome(**levels))
    total = budget.params(genome)
    if total > target:
        raise ValueError(
            f"target {target} is below the smallest model the table allows ({total})"
        )
    levels = {m: list(genome.levels(m)) for m in MODULES}
    changed = True
    while changed:
        changed = False
        for i in range(n):
            for module in ("mlp", "attn"):
                total, moved = _try_lower(budget, levels, module, i, total, target)
                changed |= moved
    genome = Genome(**levels)
    if budget.is_empty(genome):
        raise ValueError(
            f"target {target} is too small: every attention and MLP block would go"
        )
    return genome


def initial_genome(
    params_table: Budget | ParamsTable,
    target_params: int | None = None,
    *,
    level: int | None = None,
) -> Genome:
    """The search's first parent: ``uniform(level)`` or ``for_target(target)`` (one)."""
    if (target_params is None) == (level is None):
        raise ValueError("give exactly one of target_params and level")
    budget = Budget.coerce(params_table)
    if level is not None:
        genome = uniform(level, budget.num_layers)
        if budget.is_empty(genome):
            raise ValueError(f"level {level} removes every block")
        return budget.canonical(genome)
    return for_target(budget, target_params)


def _try_lower(
    budget: Budget,
    levels: dict[str, list[int]],
    module: str,
    i: int,
    total: int,
    limit: int,
) -> tuple[int, bool]:
    level = levels[module][i]
    down = budget.step_down(module, i, level)
    if down is None:
        return total, False
    new_total = (
        total
        - budget.module_params(module, i, level)
        + budget.module_params(module, i, down)
    )
    if new_total > limit:
        return total, False
    levels[module][i] = down
    return new_total, True


# ---- mutation ------------------------------------------------------------------------


def mutate(
    parent: Genome,
    rng: random.Random,
    params_table: Budget | ParamsTable,
    max_flips: int = 3,
    *,
    max_params: int | None = None,
    exclude: Collection[Genome] = (),
    max_tries: int = 1000,
) -> Genome:
    """A new child by level switches that keep it within ``max_params``.

    Flips: ``min(U{1..max_flips}, U{1..max_flips})``. Each picks a group (attn or mlp)
    with chance proportional to its dense parameters, then a uniformly random ordered
    pair of different modules of that group, one to go a step down (more params) and
    one a step up (fewer params), among the pairs that keep the child within
    ``max_params`` (groups without one are not picked; if neither group has one, among
    all pairs, with a repair in the group). Then the fill (module docstring). Children
    equal to the parent (physically) or in ``exclude`` (compared canonically: pass what
    this module returned), and empty models, are redrawn.

    ``max_params`` defaults to the parent's parameters; the search should pass its fixed
    target, so that a child can win back what rounding took from an earlier parent.
    Returns a canonical genome. ValueError if the parent is over ``max_params``;
    MutationError if no switch exists or after ``max_tries`` draws.
    """
    budget = Budget.coerce(params_table)
    if max_flips < 1:
        raise ValueError(f"max_flips must be >= 1, got {max_flips}")
    base = budget.canonical(parent)
    total = budget.params(base)
    limit = total if max_params is None else int(max_params)
    if total > limit:
        raise ValueError(f"parent has {total} parameters, above max_params {limit}")
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
        f"no new child within {limit} parameters after {max_tries} tries: every draw "
        f"equalled the parent or an excluded genome ({len(exclude)} excluded)"
    )


def _pairs(
    budget: Budget, levels: dict[str, list[int]], module: str, slack: int | None
) -> list[tuple[int, int]]:
    """Ordered ``(down, up)`` module pairs of the group whose switch costs <= slack."""
    row = levels[module]
    cost = budget.module_params
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
    """Move one module a step up or down; returns the change in parameters."""
    old = levels[module][i]
    new = (budget.step_up if up else budget.step_down)(module, i, old)
    levels[module][i] = new
    return budget.module_params(module, i, new) - budget.module_params(module, i, old)


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
            and budget.module_params(m, i, d) - budget.module_params(m, i, lv) <= slack
        ]
        if not fits:
            return Genome(**levels)
        total += _step(budget, levels, *rng.choice(fits), up=False)
