"""Training-aware selection by successive halving (method.md §3).

Each stage trains every remaining candidate briefly from its *untrained* database
weights, scores it by KL to the dense model, and keeps the best ``survivors``. The
parent joins at the last stage, so a generation never ends worse than its parent on the
final stage's data. Trained weights are thrown away; only genomes survive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from darwin_modifier.search.genome import Genome


@dataclass(frozen=True)
class Stage:
    survivors: int
    train_tokens: int
    fitness_tokens: int

    def __post_init__(self) -> None:
        if self.survivors < 1:
            raise ValueError(
                f"a stage must keep at least 1 survivor, got {self.survivors}"
            )
        if self.train_tokens < 0 or self.fitness_tokens < 1:
            raise ValueError(
                "a stage needs train_tokens >= 0 and fitness_tokens >= 1, got "
                f"{self.train_tokens} and {self.fitness_tokens}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's schedule for 16 offspring: (survivors, light-training tokens,
# fitness tokens)
PAPER_STAGES = (
    Stage(8, 10_000, 1_024),
    Stage(4, 50_000, 2_048),
    Stage(2, 100_000, 4_096),
    Stage(1, 200_000, 8_192),
)

# evaluate(genome, stage_index) -> fitness (lower is better)
Evaluate = Callable[[Genome, int], float]


def check_stages(stages: Sequence[Stage], offspring: int) -> None:
    """Refuse schedules that cannot run: survivors must shrink and end at one."""
    if not stages:
        raise ValueError("selection needs at least one stage")
    if stages[-1].survivors != 1:
        raise ValueError(
            f"the last stage must keep exactly 1 survivor (the next parent), got "
            f"{stages[-1].survivors}"
        )
    previous = offspring
    for i, stage in enumerate(stages[:-1]):
        if stage.survivors > previous:
            raise ValueError(
                f"stage {i + 1} keeps {stage.survivors} of only {previous} candidates"
            )
        previous = stage.survivors


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
        scored = [(genome, evaluate(genome, index)) for genome in alive]
        scored_stages.append(scored)
        ranked = sorted(scored, key=lambda pair: pair[1])
        alive = [genome for genome, _ in ranked[: stage.survivors]]
    return alive[0], scored_stages
