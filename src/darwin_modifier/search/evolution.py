"""The (1+λ) elitist loop: mutate, select with training, keep the winner; resumable.

Everything random is derived from the seed: mutations from one ``random.Random`` whose
state is saved after every generation, and each stage's training / fitness windows from
``(seed, generation, stage)``. A killed run therefore resumes from its state file and
ends exactly where an uninterrupted run with the same seed ends.
"""

from __future__ import annotations

import json
import os
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loguru import logger
from tqdm.auto import tqdm

from darwin_modifier.search.candidates import Workbench
from darwin_modifier.search.fitness import DenseTargets, dense_targets, kl_divergence
from darwin_modifier.search.genome import Budget, Genome, mutate
from darwin_modifier.search.selection import PAPER_STAGES, Stage, successive_halving
from darwin_modifier.training.trainer import TrainSettings, train

STATE_FILE = "search_state.json"
LOG_FILE = "search_log.jsonl"


@dataclass(frozen=True)
class SearchSettings:
    generations: int = 200
    offspring: int = 16
    stages: tuple[Stage, ...] = PAPER_STAGES
    max_flips: int = 3
    seed: int = 0
    eval_batch_size: int = 4
    training: TrainSettings = field(default_factory=TrainSettings)

    def fingerprint(self) -> dict:
        """What a resumed run must share with the run it continues."""
        return {
            "offspring": self.offspring,
            "stages": [s.to_dict() for s in self.stages],
            "max_flips": self.max_flips,
            "seed": self.seed,
            "lr": self.training.lr,
        }


@dataclass
class Pools:
    """Token windows for light training and for fitness, plus the cached dense
    targets."""

    train: torch.Tensor  # [n_train, seq]
    fitness: torch.Tensor  # [n_fit, seq]
    targets: DenseTargets  # dense outputs for every fitness token (windows flattened)

    @classmethod
    def build(
        cls, dense, train_windows, fitness_windows, topk: int | None, batch_size: int
    ) -> Pools:
        """Run the dense model once over the fitness pool and keep what KL needs."""
        parts = []
        with torch.no_grad():
            for batch in fitness_windows.split(batch_size):
                logits = dense(batch.to(dense.device), use_cache=False).logits
                parts.append(dense_targets(logits.reshape(-1, logits.shape[-1]), topk))
        return cls(train_windows, fitness_windows, DenseTargets.cat(parts))


@dataclass
class SearchResult:
    best: Genome
    history: list[dict]


def _windows(pool: torch.Tensor, tokens: int, seed: int) -> torch.Tensor:
    """Indices of ``ceil(tokens / seq)`` windows of ``pool``, drawn by ``seed``."""
    count = min(len(pool), -(-tokens // pool.shape[1]))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return order[:count].sort().values


class Evaluator:
    """Fitness of a genome at a stage: load, light-train, KL on the stage's tokens."""

    def __init__(self, bench: Workbench, pools: Pools, settings: SearchSettings):
        self.bench, self.pools, self.settings = bench, pools, settings
        self.generation = 0

    def _seed(self, stage: int, kind: int) -> int:
        return (
            (self.settings.seed * 1_000_003 + self.generation) * 101 + stage
        ) * 3 + kind

    def __call__(self, genome: Genome, stage_index: int) -> float:
        stage = self.settings.stages[stage_index]
        model = self.bench.load(genome)
        if stage.train_tokens:
            idx = _windows(
                self.pools.train, stage.train_tokens, self._seed(stage_index, 0)
            )
            train(model, self.pools.train[idx].split(1), self.settings.training)
        idx = _windows(
            self.pools.fitness, stage.fitness_tokens, self._seed(stage_index, 1)
        )
        return self.kl(model, idx)

    @torch.no_grad()
    def kl(self, model, window_indices: torch.Tensor) -> float:
        """Token-mean KL(dense ‖ model) over the given fitness windows."""
        model.eval()
        seq = self.pools.fitness.shape[1]
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for chunk in window_indices.split(self.settings.eval_batch_size):
            logits = model(self.pools.fitness[chunk].to(device), use_cache=False).logits
            token_idx = (chunk[:, None] * seq + torch.arange(seq)).reshape(-1)
            targets = self.pools.targets[token_idx]
            kl = kl_divergence(targets, logits.reshape(-1, logits.shape[-1]))
            total += float(kl) * len(token_idx)
            count += len(token_idx)
        return total / count


def run_search(
    bench: Workbench,
    budget: Budget,
    parent: Genome,
    max_params: int,
    pools: Pools,
    settings: SearchSettings,
    state_dir: str | Path,
    on_generation: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Evolve from ``parent`` for ``settings.generations``, resuming from
    ``state_dir``."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(settings.seed)
    history: list[dict] = []
    start = 0
    state = _load_state(state_dir, settings)
    if state is not None:
        start, parent, history = (
            state["generation"],
            Genome.from_dict(state["parent"]),
            state["history"],
        )
        rng.setstate(_rng_state(state["rng"]))
        logger.info(f"search: resuming at generation {start} of {settings.generations}")
    evaluator = Evaluator(bench, pools, settings)
    bar = tqdm(
        range(start, settings.generations),
        desc="DarwinLM search",
        initial=start,
        total=settings.generations,
    )
    for generation in bar:
        evaluator.generation = generation
        children: list[Genome] = []
        for _ in range(settings.offspring):
            child = mutate(
                parent,
                rng,
                budget,
                settings.max_flips,
                max_params=max_params,
                exclude=set(children) | {parent},
            )
            children.append(child)
        parent, stages = successive_halving(
            children, parent, settings.stages, evaluator
        )
        final = dict((g, f) for g, f in stages[-1])
        first = [f for _, f in stages[0]]
        record = {
            "generation": generation,
            "fitness": final[parent],
            "stage1_median": statistics.median(first),
            "stage1_best": min(first),
            "params": budget.params(parent),
            "parent": parent.to_dict(),
        }
        history.append(record)
        bar.set_postfix(kl=f"{record['fitness']:.4f}")
        _save_state(state_dir, settings, generation + 1, parent, history, rng)
        with open(state_dir / LOG_FILE, "a") as log:
            log.write(json.dumps(record) + "\n")
        if on_generation is not None:
            on_generation(record)
    return SearchResult(parent, history)


def _save_state(state_dir: Path, settings, generation, parent, history, rng) -> None:
    version, internal, gauss = rng.getstate()
    state = {
        "settings": settings.fingerprint(),
        "generation": generation,
        "parent": parent.to_dict(),
        "history": history,
        "rng": [version, list(internal), gauss],
    }
    path = state_dir / STATE_FILE
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state))
    os.replace(partial, path)


def _rng_state(saved: list):
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def _load_state(state_dir: Path, settings: SearchSettings) -> dict | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"search state {path} is corrupt ({err}); delete it to restart"
        ) from err
    if state["settings"] != settings.fingerprint():
        raise ValueError(
            f"search state in {state_dir} comes from different settings "
            f"({state['settings']} vs {settings.fingerprint()}); use another directory "
            "or delete it to restart"
        )
    return state
