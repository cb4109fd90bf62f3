"""Training-aware selection by successive halving (DarwinLM, Tang et al. 2025, §3).

Each stage trains every remaining candidate briefly from its *untrained* database
weights, scores it by KL to the dense model, and keeps the best ``survivors``. The
parent joins at the last stage, so a generation never ends worse than its parent on the
final stage's data. Trained weights are thrown away; only genomes survive.

Under torchrun a stage's candidates are scored round-robin across ranks and every rank
gets every fitness value, so all ranks keep the same survivors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from darwin_modifier.distributed import map_round_robin
from darwin_modifier.search.config import Stage, check_stages
from darwin_modifier.search.genome import Genome

# evaluate(genome, stage_index) -> fitness (lower is better)
Evaluate = Callable[[Genome, int], float]


def successive_halving(
    offspring: Sequence[Genome],
    parent: Genome,
    stages: Sequence[Stage],
    evaluate: Evaluate,
) -> tuple[Genome, list[list[tuple[Genome, float]]]]:
    """The next parent and, per stage, every (candidate, fitness) scored there."""
    check_stages(stages, len(offspring))
    alive = list(offspring)
    scored_stages: list[list[tuple[Genome, float]]] = []
    for index, stage in enumerate(stages):
        if index == len(stages) - 1 and parent not in alive:
            alive.append(parent)
        fitness = map_round_robin(lambda genome, i=index: evaluate(genome, i), alive)
        scored = list(zip(alive, fitness))
        scored_stages.append(scored)
        ranked = sorted(scored, key=lambda pair: pair[1])
        alive = [genome for genome, _ in ranked[: stage.survivors]]
    return alive[0], scored_stages
