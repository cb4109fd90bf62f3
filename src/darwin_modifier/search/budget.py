"""The budget of genomes (parameters or measured time), and the search's first parent.

:class:`Budget` indexes the database's ``table[module][layer][level]`` parameter counts,
and optionally a *cost* table of the same shape that the budget is held on instead:
measured engine time per block (:mod:`darwin_modifier.latency`) for a
``target_speedup``. Parameters always decide which levels are the same block; the cost
decides what fits. The budget must hold on parameters (or time), not on level sums as in
the paper (DarwinLM, Tang et al. 2025, arXiv 2502.07780, §3). That makes two departures
from the paper's level arithmetic; this one is the budget's (the flips are in
:mod:`darwin_modifier.search.mutation`):

- **Distinct steps.** Ladders may repeat counts (``[3, 3, 2, 2, ...]`` when a module has
  few units), and equal counts are the same pruned block (levels are snapshots of one
  greedy trajectory; the store keeps one entry per count). A "one level down/up" move
  therefore goes to the neighbouring level with *different* parameters, and genomes are
  kept canonical (each level is the first of its run of equal counts), so physically
  identical genomes compare equal and duplicates are caught by set membership. On a
  ladder without repeats this is exactly the paper's +-1 level.

The first parent (:func:`initial_genome`) is the uniform model at a level, as in the
paper, or the densest near-uniform genome within a parameter target
(:func:`for_target`).
"""

from __future__ import annotations

from darwin_modifier.search.genome import MODULES, Genome, ParamsTable, uniform


class Budget:
    """The parameter table (and cost table), and what the search needs from them.

    Built from ``table[module][layer][level]`` (see :data:`ParamsTable`) or from a
    database store with :meth:`from_store`. ``cost`` (same shape, non-negative,
    non-increasing in level, equal on levels of equal parameters) is what the budget
    is held on, in ``unit``; by default the parameters themselves.
    """

    def __init__(
        self,
        table: ParamsTable,
        cost: ParamsTable | None = None,
        unit: str = "params",
    ):
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
        self.unit = unit
        self._cost = self._table if cost is None else self._checked_cost(cost)

    def _checked_cost(
        self, cost: ParamsTable
    ) -> dict[str, tuple[tuple[int, ...], ...]]:
        checked = {}
        for module in MODULES:
            rows = [[int(c) for c in row] for row in cost.get(module, ())]
            if [len(r) for r in rows] != [len(r) for r in self._table[module]]:
                raise ValueError(
                    f"cost table's {module} rows do not match the params table's levels"
                )
            for i, row in enumerate(rows):
                canon = self._canon[module][i]
                if any(c < 0 for c in row) or any(b > a for a, b in zip(row, row[1:])):
                    raise ValueError(
                        f"{module} layer {i}: costs must be >= 0 and must not grow "
                        f"with level: {row}"
                    )
                if any(row[lv] != row[canon[lv]] for lv in range(len(row))):
                    raise ValueError(
                        f"{module} layer {i}: levels of equal parameters are one block "
                        f"and must cost the same: {row}"
                    )
            checked[module] = tuple(tuple(row) for row in rows)
        return checked

    @classmethod
    def from_store(
        cls, store, cost: ParamsTable | None = None, unit: str = "params"
    ) -> Budget:
        """From a :class:`~darwin_modifier.database.store.DatabaseStore` (complete)."""
        n = store.shape.num_layers
        table = {
            m: [
                [store.params(i, m, lv) for lv in range(len(store.ladders[m]))]
                for i in range(n)
            ]
            for m in MODULES
        }
        return cls(table, cost, unit)

    def with_cost(self, cost: ParamsTable, unit: str) -> Budget:
        """The same blocks, with the budget held on ``cost`` instead."""
        return Budget(self._table, cost, unit)

    @classmethod
    def coerce(cls, value: Budget | ParamsTable) -> Budget:
        return value if isinstance(value, Budget) else cls(value)

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

    def uniform_params(self, level: int) -> int:
        """Parameters of the uniform model at ``level``: a natural search target."""
        return self.params(uniform(level, self.num_layers))

    # ---- what the budget is held on ----------------------------------------------

    def module_cost(self, module: str, layer: int, level: int) -> int:
        return self._cost[module][layer][level]

    def cost(self, genome: Genome) -> int:
        """The genome's total cost, in :attr:`unit` (its parameters by default)."""
        self.validate(genome)
        return sum(
            self._cost[m][i][level]
            for m in MODULES
            for i, level in enumerate(genome.levels(m))
        )

    def dense_cost(self) -> int:
        return sum(row[0] for m in MODULES for row in self._cost[m])

    def identity(self, limit: int) -> dict:
        """What a resumed search must share: the limit, and any cost table."""
        if self._cost is self._table:
            return {"max_params": int(limit)}
        costs = {m: [list(row) for row in self._cost[m]] for m in MODULES}
        return {"max_cost": int(limit), "cost_unit": self.unit, "costs": costs}

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

    def canonical_level(self, module: str, layer: int, level: int) -> int:
        """The first level with the same params as ``level`` (the same block)."""
        return self._canon[module][layer][level]

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
    """The densest near-uniform genome with ``cost <= target_params`` (the cost is
    the parameters unless the budget has a cost table).

    Start from the smallest uniform level that fits the target, then lower single
    modules (add parameters) while the target still holds, in passes over the layers
    in :func:`spread_order` (MLP, then attention, of each): whatever remainder the
    uniform level leaves goes to modules spread evenly over the depth, not to the
    first layers. Deterministic; the result is canonical. ValueError if the target
    is above the dense model or too small to keep anything.
    """
    budget = Budget.coerce(params_table)
    target = int(target_params)
    if target > budget.dense_cost():
        raise ValueError(
            f"target {target} is above the dense model's {budget.dense_cost()} "
            f"decoder-block {budget.unit}"
        )
    n = budget.num_layers
    common = min(budget.num_levels(m, i) for m in MODULES for i in range(n))
    fitting = [lv for lv in range(common) if budget.cost(uniform(lv, n)) <= target]
    if fitting:
        levels = {m: [fitting[0]] * n for m in MODULES}
    else:
        levels = {m: [budget.num_levels(m, i) - 1 for i in range(n)] for m in MODULES}
    genome = budget.canonical(Genome(**levels))
    total = budget.cost(genome)
    if total > target:
        raise ValueError(
            f"target {target} is below the smallest model the table allows ({total} "
            f"{budget.unit})"
        )
    levels = {m: list(genome.levels(m)) for m in MODULES}
    changed = True
    while changed:
        changed = False
        for i in spread_order(n):
            for module in ("mlp", "attn"):
                total, moved = _try_lower(budget, levels, module, i, total, target)
                changed |= moved
    genome = Genome(**levels)
    if budget.is_empty(genome):
        raise ValueError(
            f"target {target} is too small: every attention and MLP block would go"
        )
    return genome


def spread_order(n: int) -> list[int]:
    """Layers ``0..n-1`` in an order whose every prefix is spread evenly over the
    depth: the van der Corput sequence (0, 1/2, 1/4, 3/4, 1/8, ...) scaled to ``n``."""
    order: list[int] = []
    j = 0
    while len(order) < n:
        fraction, bit, k = 0.0, 0.5, j
        while k:
            fraction += bit * (k & 1)
            k >>= 1
            bit /= 2
        layer = int(fraction * n)
        if layer not in order:
            order.append(layer)
        j += 1
    return order


def removal_warning(budget: Budget, parent: Genome, limit: int) -> str | None:
    """What an extreme target produces, said before the search spends its time: a
    parent that already removes most blocks leaves little of the model to search."""
    removed = sum(
        budget.module_params(module, i, level) == 0
        for module in MODULES
        for i, level in enumerate(parent.levels(module))
    )
    blocks = len(MODULES) * budget.num_layers
    if removed <= blocks // 2:
        return None
    what = "parameters" if budget.unit == "params" else "time"
    return (
        f"the target keeps {limit / budget.dense_cost():.1%} of the "
        f"decoder-block {what}: even the uniform parent removes {removed} of "
        f"{blocks} attention and MLP blocks entirely, so expect a model far from the "
        "dense one (keep more: a larger target_fraction or target_params, a "
        "smaller target_speedup)"
    )


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
        - budget.module_cost(module, i, level)
        + budget.module_cost(module, i, down)
    )
    if new_total > limit:
        return total, False
    levels[module][i] = down
    return new_total, True
