"""Fitness of a candidate at a selection stage: pluggable, lower is better.

:class:`TrainedKL` is DarwinLM's training-aware fitness: load the genome's untrained
database weights, train briefly on the stage's share of the training pool, then take
KL to the cached dense targets on the stage's fitness windows. With
``train=False`` it is the EvoPress-style ablation (selection without training) on the
same windows. Any callable ``(genome, generation, stage_index) -> float`` can take its
place in :func:`~darwin_modifier.search.evolution.run_search`.

Windows are drawn from ``(seed, generation, stage)``, so a resumed search scores every
candidate on the tokens an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from darwin_modifier.artifacts import digest, tokens_digest
from darwin_modifier.evaluation.kl import (
    DenseTargets,
    chunked_logits,
    dense_targets,
    kl_per_token,
)
from darwin_modifier.search.candidates import Workbench
from darwin_modifier.search.config import SearchConfig
from darwin_modifier.search.genome import Genome
from darwin_modifier.training.trainer import train

# fitness(genome, generation, stage_index) -> fitness (lower is better)
Fitness = Callable[[Genome, int, int], float]


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
                for _, logits in chunked_logits(dense, batch.to(dense.device)):
                    parts.append(dense_targets(logits, topk))
        return cls(train_windows, fitness_windows, DenseTargets.cat(parts))

    def digest(self) -> str:
        """Identifies the pools' tokens and the kind of targets (for resume)."""
        return digest(
            {
                "train": tokens_digest(self.train),
                "fitness": tokens_digest(self.fitness),
                "topk": self.targets.k,
            }
        )


def _windows(pool: torch.Tensor, tokens: int, seed: int) -> torch.Tensor:
    """Indices of ``ceil(tokens / seq)`` windows of ``pool``, drawn by ``seed``."""
    count = min(len(pool), -(-tokens // pool.shape[1]))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return order[:count].sort().values


def _exactly(windows: torch.Tensor, tokens: int) -> list[torch.Tensor]:
    """One window per step, the last cut short so that the stage trains on exactly
    its ``train_tokens`` (whole windows would add up to a window per stage: the paper's
    10K tokens at sequence 4096 would train on 12,288). A remainder of one token has
    nothing to predict and is dropped."""
    batches = list(windows.split(1))
    keep = tokens - (len(batches) - 1) * windows.shape[1]  # tokens of the last one
    if keep < 2:
        batches.pop()
    elif keep < windows.shape[1]:
        batches[-1] = batches[-1][:, :keep]
    return batches


class TrainedKL:
    """Load, light-train (unless ``train=False``), KL on the stage's tokens."""

    def __init__(
        self, bench: Workbench, pools: Pools, config: SearchConfig, train: bool = True
    ):
        self.bench, self.pools, self.config = bench, pools, config
        self.train = train
        self.optim = config.light_training()

    def identity(self) -> dict:
        """Which fitness a search state was scored with (a resume must not switch)."""
        return {"fitness": "trained_kl" if self.train else "untrained_kl"}

    def _seed(self, generation: int, stage: int, kind: int) -> int:
        return ((self.config.seed * 1_000_003 + generation) * 101 + stage) * 3 + kind

    def __call__(self, genome: Genome, generation: int, stage_index: int) -> float:
        stage = self.config.selection_stages[stage_index]
        model = self.bench.load(genome)
        if self.train and stage.train_tokens:
            idx = _windows(
                self.pools.train,
                stage.train_tokens,
                self._seed(generation, stage_index, 0),
            )
            train(
                model, _exactly(self.pools.train[idx], stage.train_tokens), self.optim
            )
        idx = _windows(
            self.pools.fitness,
            stage.fitness_tokens,
            self._seed(generation, stage_index, 1),
        )
        return self.kl(model, idx)

    @torch.no_grad()
    def kl(self, model, window_indices: torch.Tensor) -> float:
        """Token-mean KL(dense ‖ model) over the given fitness windows."""
        model.eval()
        seq = self.pools.fitness.shape[1]
        device = next(model.parameters()).device
        total, count = 0.0, 0
        dtype = self.bench.source_dtype  # fp32 weights, the dense model's compute
        low_precision = dtype in (torch.bfloat16, torch.float16)
        for chunk in window_indices.split(self.config.eval_batch_size):
            token_idx = (chunk[:, None] * seq + torch.arange(seq)).reshape(-1)
            ids = self.pools.fitness[chunk].to(device)
            with torch.autocast(
                device.type, dtype, enabled=low_precision, cache_enabled=False
            ):
                for start, logits in chunked_logits(model, ids):
                    targets = self.pools.targets[token_idx[start : start + len(logits)]]
                    total += float(kl_per_token(targets, logits).sum())
                    count += len(logits)
        return total / count


def untrained_kl(bench: Workbench, pools: Pools, config: SearchConfig) -> TrainedKL:
    """The EvoPress-style ablation: the same selection, no light training."""
    return TrainedKL(bench, pools, config, train=False)


class ProbeKL:
    """A genome's KL on one fixed set of held-out windows, untrained: what the search
    curve plots. Selection scores each generation on fresh tokens after light
    training, so its values move with the tokens as much as with the genome; this
    one moves only with the genome, and is what the saved model (stitched from the
    database, before post-training) gives."""

    def __init__(self, bench: Workbench, probe: Pools, config: SearchConfig):
        self.scorer = TrainedKL(bench, probe, config, train=False)
        self._scores: dict[Genome, float] = {}  # a parent often survives generations

    def __call__(self, genome: Genome) -> float:
        if genome not in self._scores:
            model = self.scorer.bench.load(genome)
            every = torch.arange(len(self.scorer.pools.fitness))
            self._scores[genome] = self.scorer.kl(model, every)
        return self._scores[genome]
