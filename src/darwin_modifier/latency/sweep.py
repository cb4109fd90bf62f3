"""Which models to time, and the per-block costs that their times give.

A model's time is taken as additive over its blocks: ``T = F + sum_i A_i(level) +
M_i(level)``, with ``F`` what every model pays (embeddings, LM head, sampling, the
engine's step) and a removed block costing nothing (the serving model leaves it out:
no kernel, no norm). The sweep times the dense model and, for every level of a module
type, the model with that module at that level in every layer (attention: every layer
but layer 0, which stays dense, since vLLM cannot serve a model without any attention);
the other module type stays dense. Differences to the sweep's "removed" model then give
the per-layer cost of each level, ``F`` follows from the dense time, and a check model
(both types at the middle level, or the nearest denser one that keeps attention) that
was not used in the fit shows how well the additive model predicts. All of these are
served as shrunk checkpoints (the plugin's model, even when dense); the ``reference``
model is the dense one as the user serves it now (vLLM's own architecture), what a
speedup is measured against.

Levels are timed once per physical shape: repeated ladder counts give the same config.
On GQA models in ``gqa_mode: query`` the layers of one level may differ in layout; the
cost of that level is then the average over the layers (exact for uniform models).
"""

from __future__ import annotations

from dataclasses import dataclass

from darwin_modifier.search.genome import MODULES, Genome

MODES = ("decode", "prefill")


@dataclass(frozen=True)
class Sweep:
    """The timed models: name -> genome, and which genome each level's cost comes
    from."""

    num_layers: int
    num_levels: dict[str, int]
    genomes: dict[str, Genome]

    @classmethod
    def design(
        cls,
        num_layers: int,
        num_levels: dict[str, int],
        attn_ladder: list[int] | None = None,
    ) -> Sweep:
        """``attn_ladder`` (kept units per level) keeps the check model servable."""
        if num_layers < 2:
            raise ValueError(
                "a latency table needs a model of at least 2 layers: vLLM cannot serve "
                "a model whose only attention is removed"
            )
        n = num_layers
        dense = (0,) * n
        genomes = {"dense": Genome(dense, dense)}
        for level in range(1, num_levels["attn"]):
            genomes[f"attn{level}"] = Genome((0,) + (level,) * (n - 1), dense)
        for level in range(1, num_levels["mlp"]):
            genomes[f"mlp{level}"] = Genome(dense, (level,) * n)
        middle = min(num_levels.values()) // 2
        while attn_ladder and middle and attn_ladder[middle] == 0:
            middle -= 1
        genomes["check"] = Genome((middle,) * n, (middle,) * n)
        return cls(n, dict(num_levels), genomes)

    def name_of(self, module: str, level: int) -> str:
        return "dense" if level == 0 else f"{module}{level}"

    def costs(self, seconds: dict[str, float]) -> dict:
        """Per-layer cost of each level (seconds, non-increasing, 0 when removed),
        ``fixed_s``, and ``dense_s`` (the reference's time), from each model's time."""
        n = self.num_layers
        dense = seconds["dense"]
        layers = {"attn": n - 1, "mlp": n}  # layers a sweep model changes
        per_level = {}
        for module in MODULES:
            last = self.num_levels[module] - 1
            removed = seconds[self.name_of(module, last)]
            row = [
                (seconds[self.name_of(module, level)] - removed) / layers[module]
                for level in range(last)
            ] + [0.0]
            # a smaller block is never slower: what says otherwise is noise
            for level in range(1, len(row)):
                row[level] = min(row[level], row[level - 1])
            per_level[module] = [max(0.0, c) for c in row]
        fixed = dense - n * (per_level["attn"][0] + per_level["mlp"][0])
        return {
            "fixed_s": fixed,
            "dense_s": seconds["reference"],
            "shrunk_dense_s": dense,
            **per_level,
        }


def predict(costs: dict, genome: Genome) -> float:
    """Predicted time of a genome's model (seconds) from :meth:`Sweep.costs`."""
    return costs["fixed_s"] + sum(
        costs[m][level] for m in MODULES for level in genome.levels(m)
    )
