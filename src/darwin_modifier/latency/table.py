"""The latency table: per-block engine time of every database level, with its identity.

A JSON file (``latency/<digest>.json`` in the database directory) holding what it was
measured for (the model's shape and layouts, engine, device, dtype, batch, lengths),
the timed models' raw times and the fitted costs per mode (:mod:`.sweep`). It turns a
``target_speedup`` into a :class:`~darwin_modifier.search.budget.Budget` on measured
time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from darwin_modifier.artifacts import require_same, write_json
from darwin_modifier.latency.sweep import MODES, predict
from darwin_modifier.search.budget import Budget
from darwin_modifier.search.genome import MODULES, Genome

FORMAT = 1
NS = 1e9  # the budget counts integer nanoseconds


@dataclass(frozen=True)
class LatencyTable:
    identity: dict
    times: dict[str, dict]  # timed model name -> its measure.time_model result
    costs: dict[str, dict]  # mode -> Sweep.costs
    check: dict[str, dict]  # mode -> predicted and measured time of the check model

    def save(self, path: str | Path) -> None:
        write_json(
            Path(path),
            {
                "format": FORMAT,
                "identity": self.identity,
                "costs": self.costs,
                "check": self.check,
                "times": self.times,
            },
        )

    @classmethod
    def load(cls, path: str | Path, identity: dict | None = None) -> LatencyTable:
        """The table at ``path``; refused, with the difference named, when it was
        measured for another ``identity`` (keys absent from ``identity`` not
        compared)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            table = cls(data["identity"], data["times"], data["costs"], data["check"])
            if data["format"] != FORMAT or set(table.costs) != set(MODES):
                raise ValueError(f"format {data['format']}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"latency table {path} is unreadable or corrupt ({err}); delete it to "
                "measure it again"
            ) from err
        if identity is not None:
            stored = {k: table.identity.get(k) for k in identity}
            require_same(
                stored,
                identity,
                what=f"latency table {path} was measured for another setup",
                fix="point latency_table elsewhere, or delete it to measure again",
            )
        return table

    def predicted_s(self, genome: Genome, mode: str) -> float:
        return predict(self.costs[mode], genome)

    def speedup(self, genome: Genome, mode: str) -> float:
        """Predicted speedup of the genome's model over the dense one."""
        return self.costs[mode]["dense_s"] / self.predicted_s(genome, mode)

    def budget(self, params: Budget, mode: str) -> Budget:
        """``params`` with this table's costs (ns) as what the budget holds on: the
        level's cost, taken at the first level of equal parameters (the same block)."""
        costs = {}
        for module in MODULES:
            table = self.costs[mode][module]
            shape = [len(r) for r in table]
            wanted = [params.num_levels(module, i) for i in range(params.num_layers)]
            if shape != wanted:
                raise ValueError(
                    f"latency table's {module} costs have {shape} levels per layer, "
                    f"the database {wanted}; measure it again for this database"
                )
            rows = []
            for i, per_level in enumerate(table):
                row: list[int] = []
                for level, cost in enumerate(per_level):
                    same = level and params.module_params(
                        module, i, level
                    ) == params.module_params(module, i, level - 1)
                    row.append(row[-1] if same else min([round(cost * NS), *row[-1:]]))
                rows.append(row)
            costs[module] = rows
        return params.with_cost(costs, unit="ns")

    def limit_ns(self, speedup: float, mode: str) -> int:
        """The decoder blocks' time budget for ``speedup``; ValueError naming the
        largest speedup when even removing every block would not reach it."""
        costs = self.costs[mode]
        if costs["fixed_s"] <= 0:
            raise ValueError(
                f"latency table's {mode} fit is inconsistent (fixed cost "
                f"{costs['fixed_s'] * 1e3:.2f} ms <= 0: the machine was likely busy "
                "while it was measured); delete it and measure again on a quiet machine"
            )
        budget = costs["dense_s"] / speedup - costs["fixed_s"]
        if budget <= 0:
            ceiling = costs["dense_s"] / costs["fixed_s"]
            raise ValueError(
                f"target_speedup {speedup} is out of reach in {mode}: the "
                f"embeddings, LM head and engine step alone take "
                f"{costs['fixed_s'] * 1e3:.2f} of the dense model's "
                f"{costs['dense_s'] * 1e3:.2f} ms (at most "
                f"{ceiling:.2f}x); set a smaller target_speedup"
            )
        return int(budget * NS)

    def format(self, ladders: dict[str, list[int]]) -> str:
        """Per level: kept units and per-block time (layer 0's) in each mode; the fit
        and the check."""
        lines = [
            f"{self.identity.get('engine', '?')} on {self.identity.get('device', '?')}"
            f", batch {self.identity['batch']}, {self.identity['dtype']}",
            f"{'module':<6} {'level':>5} {'kept':>6} {'decode us':>10} "
            f"{'prefill us':>11}",
        ]
        for module in MODULES:
            for level, kept in enumerate(ladders[module]):
                decode, prefill = (self.costs[m][module][0][level] for m in MODES)
                lines.append(
                    f"{module:<6} {level:>5} {kept:>6} {decode * 1e6:>10.1f} "
                    f"{prefill * 1e6:>11.1f}"
                )
        for mode in MODES:
            costs, check = self.costs[mode], self.check[mode]
            lines.append(
                f"{mode}: dense {costs['dense_s'] * 1e3:.2f} ms (as a shrunk "
                f"checkpoint {costs['shrunk_dense_s'] * 1e3:.2f} ms), fixed "
                f"{costs['fixed_s'] * 1e3:.2f} ms, fit residual "
                f"{costs['fit_rms']:.1%}; check model predicted "
                f"{check['predicted_s'] * 1e3:.2f} ms, measured "
                f"{check['measured_s'] * 1e3:.2f} ms ({check['error']:+.1%})"
            )
        return "\n".join(lines)
