"""Which models to time, and the per-block costs that their times give.

A model's time is taken as additive over its blocks, and a block's time as affine in
its size: ``T = F + sum over present blocks of (overhead + slope * params)``, one
overhead and one slope per module type, with ``F`` what every model pays (embeddings,
LM head, sampling, the engine's step) and a removed block costing nothing (the serving
model leaves it out: no kernel, no norm). The overhead is what parameter counts miss:
a kernel launch, a KV-cache write and a norm per attention block, whatever its width.
The five numbers are fitted by least squares (non-negative) to every timed model at
once, so the noise of one model's time (10% run to run on a shared 2-core machine)
is averaged over all of them, where differences of single models would amplify it.

The sweep times the dense model and, for every level of a module type, the model with
that module at that level in every layer (attention: every layer but layer 0, which
stays dense, since vLLM cannot serve a model without any attention); the other module
type stays dense. A check model (both types at the middle level, or the nearest denser
one that keeps attention), not used in the fit, shows how well the fit predicts. All of
these are served as shrunk checkpoints (the plugin's model, even when dense); the
``reference`` model is the dense one as the user serves it now (vLLM's own
architecture), what a speedup is measured against. Levels are timed once per physical
shape: repeated ladder counts give the same config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from darwin_modifier.search.genome import MODULES, Genome, ParamsTable

SCALE = 1e6  # parameters in millions: a well-conditioned least-squares problem

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

    def costs(self, seconds: dict[str, float], params: ParamsTable) -> dict:
        """The fit (module docstring) from each model's time; ``params`` is the
        database's ``[module][layer][level]`` parameter table. Per-layer cost rows of
        every level (seconds), ``fixed_s``, the coefficients, the fit's relative RMS
        residual, and ``dense_s`` (the reference's time)."""
        names = [n for n in self.genomes if n != "check"]
        columns = ["fixed", "attn_overhead", "attn_slope", "mlp_overhead", "mlp_slope"]
        rows = [self._features(self.genomes[n], params) for n in names]
        times = [seconds[n] for n in names]
        coef = _nonnegative_least_squares(rows, times)
        per_layer = {
            m: [
                [
                    (coef[o] + coef[o + 1] * p / SCALE) if p else 0.0
                    for p in params[m][i]
                ]
                for i in range(self.num_layers)
            ]
            for m, o in (("attn", 1), ("mlp", 3))
        }
        fitted = [sum(c * x for c, x in zip(coef, row)) for row in rows]
        residual = math.sqrt(
            sum((f / t - 1) ** 2 for f, t in zip(fitted, times)) / len(times)
        )
        return {
            "fixed_s": coef[0],
            "dense_s": seconds["reference"],
            "shrunk_dense_s": seconds["dense"],
            "coefficients": dict(zip(columns, coef)),
            "fit_rms": residual,
            **per_layer,
        }

    @staticmethod
    def _features(genome: Genome, params: ParamsTable) -> list[float]:
        x = [1.0, 0.0, 0.0, 0.0, 0.0]
        for module, o in (("attn", 1), ("mlp", 3)):
            for i, level in enumerate(genome.levels(module)):
                p = params[module][i][level]
                x[o] += p > 0
                x[o + 1] += p / SCALE
        return x


def _nonnegative_least_squares(rows: list[list[float]], times: list[float]) -> list:
    """Least squares with every coefficient >= 0 (noise must not make a block
    cheaper than nothing): drop the most negative and solve again (active set; 5
    unknowns, so at most 5 solves)."""
    free = list(range(len(rows[0])))
    while True:
        a = torch.tensor([[r[j] for j in free] for r in rows], dtype=torch.float64)
        b = torch.tensor(times, dtype=torch.float64)[:, None]
        solution = torch.linalg.lstsq(a, b, driver="gelsd").solution[:, 0].tolist()
        coef = [0.0] * len(rows[0])
        for j, value in zip(free, solution):
            coef[j] = value
        negative = [j for j in free if coef[j] < 0]
        if not negative:
            return coef
        free.remove(min(negative, key=lambda j: coef[j]))


def predict(costs: dict, genome: Genome) -> float:
    """Predicted time of a genome's model (seconds) from :meth:`Sweep.costs`."""
    return costs["fixed_s"] + sum(
        costs[m][i][level] for m in MODULES for i, level in enumerate(genome.levels(m))
    )
