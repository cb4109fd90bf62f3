"""Search step: token pools, the uniform parent, the evolution, and its report; then
a genome made into a shrunk model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from torch import nn
from transformers import AutoTokenizer

from darwin_modifier.artifacts import holding
from darwin_modifier.data.windows import load_texts, token_windows
from darwin_modifier.database.assemble import assemble
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.distributed import is_main
from darwin_modifier.format.shrink import shrink
from darwin_modifier.latency.build import latency_table
from darwin_modifier.pipeline.config import DarwinLMConfig
from darwin_modifier.pipeline.report import RESULT_FILE, write_report
from darwin_modifier.plan import Plan
from darwin_modifier.search.budget import Budget, initial_genome, removal_warning
from darwin_modifier.search.candidates import Workbench
from darwin_modifier.search.evolution import run_search
from darwin_modifier.search.fitness import Fitness, Pools, ProbeKL, TrainedKL
from darwin_modifier.search.genome import Genome

# (workbench, pools, config) -> fitness; e.g. TrainedKL or search.fitness.untrained_kl
FitnessFactory = Callable[[Workbench, Pools, DarwinLMConfig], Fitness]


@dataclass(frozen=True)
class SearchOutcome:
    """The uniform parent (the baseline at the same budget) and the search's best."""

    uniform: Genome
    best: Genome
    history: list[dict]

    @classmethod
    def load(cls, search_dir: str | Path) -> SearchOutcome:
        """What :func:`search` wrote to ``search_dir``."""
        path = Path(search_dir) / RESULT_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"no search result at {path}; run the DarwinLM stage with "
                f"search_dir: {search_dir}"
            )
        result = json.loads(path.read_text())
        return cls(
            Genome.from_dict(result["uniform"]["genome"]),
            Genome.from_dict(result["darwinlm"]["genome"]),
            result.get("history", []),
        )


def build_pools(config: DarwinLMConfig, model: nn.Module, tokenizer) -> Pools:
    """Disjoint fitness and training windows from the search dataset's train split."""
    seq = config.search_seq_len
    n_fit = -(-config.fitness_pool_tokens // seq)
    n_train = -(-config.train_pool_tokens // seq)
    texts = load_texts(config.search_dataset, "train", config.search_text_column)
    windows = token_windows(texts, tokenizer, seq, n_fit + n_train, seed=config.seed)
    order = torch.randperm(
        len(windows), generator=torch.Generator().manual_seed(config.seed)
    )
    fitness, train = windows[order[:n_fit]], windows[order[n_fit:]]
    topk = config.fitness_topk if config.fitness == "topk_kl" else None
    logger.info(
        f"search pools: {n_fit} fitness and {n_train} training windows of {seq}"
    )
    return Pools.build(model, train, fitness, topk, config.eval_batch_size)


def build_probe(config: DarwinLMConfig, model: nn.Module, tokenizer) -> Pools | None:
    """The fixed held-out windows the search curve is measured on (held-out split:
    never trained or selected on), with their dense targets."""
    if config.probe_tokens == 0:
        return None
    seq = config.search_seq_len
    texts = load_texts(config.search_dataset, "heldout", config.search_text_column)
    try:
        windows = token_windows(
            texts, tokenizer, seq, -(-config.probe_tokens // seq), seed=config.seed
        )
    except ValueError as err:  # a small dataset's held-out split: no curve, no loss
        logger.warning(f"search: no probe curve ({err}); set probe_tokens lower or 0")
        return None
    topk = config.fitness_topk if config.fitness == "topk_kl" else None
    no_training = windows[:0]
    return Pools.build(model, no_training, windows, topk, config.eval_batch_size)


def search(
    model: nn.Module,
    store: DatabaseStore,
    config: DarwinLMConfig,
    fitness: FitnessFactory = TrainedKL,
    tokenizer=None,
) -> SearchOutcome:
    """The best genome for the config's target (the uniform parent if no
    generations); writes the report to ``config.search_dir``."""
    budget, parent, limit = _budget(model, store, config)
    if warning := removal_warning(budget, parent, limit):
        logger.warning(f"search: {warning}")
    # held through the report, so another run never reads a half-written one
    with holding(config.search_dir, "search_dir"):
        best, history = parent, []
        if config.generations > 0:
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
            device = next(model.parameters()).device
            pools = build_pools(config, model, tokenizer)
            probe = build_probe(config, model, tokenizer)
            if device.type != "cpu":
                # the dense targets are cached: from here on the dense weights are only
                # the source of block slices, which host memory serves as well
                model.to("cpu")
            bench = Workbench(
                model,
                store,
                parent,
                device=device,
                train_embeddings=config.train_embeddings,
            )
            result = run_search(
                bench,
                budget,
                parent,
                limit,
                pools,
                config,
                config.search_dir,
                fitness(bench, pools, config),
                probe=None if probe is None else ProbeKL(bench, probe, config),
            )
            best, history = result.best, result.history
            del bench
            model.to(device)
        outcome = SearchOutcome(parent, best, history)
        if is_main():
            write_report(Path(config.search_dir), store, outcome.uniform, best, history)
    return outcome


def _budget(
    model: nn.Module, store: DatabaseStore, config: DarwinLMConfig
) -> tuple[Budget, Genome, int]:
    """What the search holds its children to, its first parent, and the limit: the
    parameter target, or for ``target_speedup`` the blocks' time on vLLM."""
    budget = Budget.from_store(store)
    if config.target_speedup is not None:
        table = _measured_table(model, store, config)
        mode = config.speedup_mode
        budget = table.budget(budget, mode)
        check = table.check[mode]["error"]
        if abs(check) > 0.1:
            logger.warning(
                f"search: the latency table predicts its check model {check:+.1%} off "
                "its measured time; speedups will be as uncertain (measure it again "
                "on a quiet machine: delete it)"
            )
        # the dense model, as a shrunk checkpoint, may already meet the target
        limit = min(table.limit_ns(config.target_speedup, mode), budget.dense_cost())
        try:
            parent = initial_genome(budget, limit)
        except ValueError as err:
            raise ValueError(
                f"target_speedup {config.target_speedup} cannot be met by the "
                f"database's levels ({err}); set a smaller target_speedup"
            ) from err
        logger.info(
            f"search: {mode} time budget {limit / 1e6:.2f} ms of blocks for "
            f"{config.target_speedup}x; uniform parent predicted "
            f"{table.speedup(parent, mode):.3f}x, {budget.params(parent):,} params"
        )
        return budget, parent, limit
    target_params, target_level = config.resolve(budget.dense_params())
    parent = initial_genome(budget, target_params, level=target_level)
    limit = target_params if target_params is not None else budget.params(parent)
    logger.info(
        f"search: uniform parent {budget.params(parent):,} params, budget {limit:,}"
    )
    return budget, parent, limit


def _measured_table(model: nn.Module, store: DatabaseStore, config: DarwinLMConfig):
    """The latency table; the model leaves the GPU while vLLM may need it."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        model.to("cpu")
        torch.cuda.empty_cache()
    try:
        return latency_table(store, model.config, config)
    finally:
        model.to(device)


def plan_of(store: DatabaseStore, genome: Genome) -> Plan:
    """The genome's kept heads and channels per layer (sizes, parameter counts)."""
    return assemble(store, genome.attn, genome.mlp)[0]


def materialize(dense: nn.Module, store: DatabaseStore, genome: Genome) -> nn.Module:
    """A new shrunk model: the genome's blocks from the database, the rest from
    ``dense`` (which is left as it is)."""
    return shrink(dense, *assemble(store, genome.attn, genome.mlp))
