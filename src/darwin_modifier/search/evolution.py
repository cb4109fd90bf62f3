"""The (1+λ) elitist loop: mutate, select with training, keep the winner; resumable.

Everything random is derived from the seed: mutations from one ``random.Random`` whose
state is saved after every generation, and each stage's training / fitness windows from
``(seed, generation, stage)``. A killed run therefore resumes from its state file and
ends exactly where an uninterrupted run with the same seed ends. Under torchrun every
rank draws the same offspring from the same seed and state; only the main rank writes
the state and the log, and every rank resumes from them.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from tqdm.auto import tqdm

from darwin_modifier.artifacts import holding, replacing, require_same, write_json
from darwin_modifier.distributed import is_main
from darwin_modifier.search.budget import Budget
from darwin_modifier.search.candidates import Workbench
from darwin_modifier.search.config import SearchConfig
from darwin_modifier.search.fitness import Fitness, Pools, TrainedKL
from darwin_modifier.search.genome import Genome
from darwin_modifier.search.mutation import mutate
from darwin_modifier.search.selection import successive_halving

STATE_FILE = "search_state.json"
LOG_FILE = "search_log.jsonl"


@dataclass
class SearchResult:
    best: Genome
    history: list[dict]


def search_identity(
    config: SearchConfig,
    bench: Workbench,
    pools: Pools,
    parent: Genome,
    budget: Budget,
    limit: int,
    fitness: Fitness,
) -> dict:
    """What a resumed search must share with the one it continues: its settings and
    fitness, the database it draws blocks from, its token pools, its first parent and
    its budget. Not the number of generations: more of them continue the search."""
    settings = config.search_settings()
    for key in ("generations", "eval_batch_size", "gradient_checkpointing"):
        settings.pop(key)
    if config.fitness != "topk_kl":
        settings.pop("fitness_topk")  # unused
    default = {"fitness": f"{type(fitness).__module__}.{type(fitness).__qualname__}"}
    return {
        "settings": settings,
        "fitness": getattr(fitness, "identity", lambda: default)(),
        "database": bench.store.digest(),
        "pools": pools.digest(),
        "start": parent.to_dict(),
        **budget.identity(limit),
    }


def run_search(
    bench: Workbench,
    budget: Budget,
    parent: Genome,
    limit: int,
    pools: Pools,
    config: SearchConfig,
    state_dir: str | Path,
    fitness: Fitness | None = None,
    probe: Callable[[Genome], float] | None = None,
) -> SearchResult:
    """Evolve from ``parent`` for ``config.generations`` within ``budget.cost <=
    limit``, resuming from ``state_dir``.

    ``fitness`` defaults to DarwinLM's training-aware :class:`TrainedKL`. With
    ``probe`` (e.g. :class:`~darwin_modifier.search.fitness.ProbeKL`), every
    generation's record also has the parent's ``probe_kl`` and the lowest so far,
    ``probe_best``.
    """
    state_dir = Path(state_dir)
    fitness = fitness or TrainedKL(bench, pools, config)
    identity = search_identity(config, bench, pools, parent, budget, limit, fitness)
    rng = random.Random(config.seed)
    with holding(state_dir, "search_dir"):
        history: list[dict] = []
        start = 0
        state = _load_state(state_dir, identity)
        if state is not None:
            start, parent, history = (
                state["generation"],
                Genome.from_dict(state["parent"]),
                state["history"],
            )
            rng.setstate(_rng_state(state["rng"]))
            if is_main():
                _write_log(state_dir, history)  # a kill may have come between two
            logger.info(
                f"search: resuming at generation {start} of {config.generations}"
            )
        bar = tqdm(
            range(start, config.generations),
            desc="DarwinLM search",
            initial=start,
            total=config.generations,
            disable=not is_main(),
        )
        for generation in bar:
            parent, record = _generation(
                parent, generation, rng, budget, limit, config, fitness
            )
            if probe is not None:
                record["probe_kl"] = probe(parent)
                earlier = [r["probe_best"] for r in history if "probe_best" in r]
                record["probe_best"] = min([record["probe_kl"], *earlier])
            history.append(record)
            bar.set_postfix(kl=f"{record.get('probe_kl', record['fitness']):.4f}")
            if is_main():
                _save_state(state_dir, identity, generation + 1, parent, history, rng)
                _write_log(state_dir, history)
    return SearchResult(parent, history)


def _generation(
    parent: Genome,
    generation: int,
    rng: random.Random,
    budget: Budget,
    limit: int,
    config: SearchConfig,
    fitness: Fitness,
) -> tuple[Genome, dict]:
    """One (1 + λ) step: offspring by mutation, survivors by successive halving."""
    children: list[Genome] = []
    for _ in range(config.offspring):
        child = mutate(
            parent,
            rng,
            budget,
            config.max_flips,
            max_cost=limit,
            exclude=set(children) | {parent},
        )
        children.append(child)
    parent, stages = successive_halving(
        children,
        parent,
        config.selection_stages,
        lambda genome, stage: fitness(genome, generation, stage),
    )
    final = dict(stages[-1])
    first = [f for _, f in stages[0]]
    record = {
        "generation": generation,
        "fitness": final[parent],
        "stage1_median": statistics.median(first),
        "stage1_best": min(first),
        "params": budget.params(parent),
        "parent": parent.to_dict(),
    }
    if budget.unit != "params":
        record[f"cost_{budget.unit}"] = budget.cost(parent)
    return parent, record


def _save_state(state_dir: Path, identity, generation, parent, history, rng) -> None:
    version, internal, gauss = rng.getstate()
    state = {
        "identity": identity,
        "generation": generation,
        "parent": parent.to_dict(),
        "history": history,
        "rng": [version, list(internal), gauss],
    }
    write_json(state_dir / STATE_FILE, state, indent=None)


def _write_log(state_dir: Path, history: list[dict]) -> None:
    """The log, rewritten whole from the state's history (never appended), so that
    it is never a line short of the state or torn."""
    with replacing(state_dir / LOG_FILE) as partial:
        partial.write_text("".join(json.dumps(record) + "\n" for record in history))


def _rng_state(saved: list):
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def _load_state(state_dir: Path, identity: dict) -> dict | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"search state {path} is corrupt ({err}); delete it to restart"
        ) from err
    if "identity" not in state:
        raise ValueError(
            f"search state {path} was written by an older version of darwin-modifier; "
            "delete it to restart"
        )
    require_same(
        state["identity"],
        identity,
        what=f"search state in {state_dir} was made with different settings or inputs",
        fix="use another search_dir or delete it to restart",
    )
    return state
