"""The search step of the modifier: pools, uniform parent, evolution, report."""

from __future__ import annotations

from pathlib import Path

import torch
from loguru import logger
from transformers import AutoTokenizer

from darwin_modifier.data.windows import load_texts, token_windows
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.report import write_report
from darwin_modifier.search.candidates import Workbench
from darwin_modifier.search.evolution import Pools, SearchSettings, run_search
from darwin_modifier.search.genome import Budget, Genome, initial_genome
from darwin_modifier.search.selection import Stage
from darwin_modifier.training.trainer import TrainSettings


def search_settings(modifier) -> SearchSettings:
    return SearchSettings(
        generations=modifier.generations,
        offspring=modifier.offspring,
        stages=tuple(Stage(**s.model_dump()) for s in modifier.selection_stages),
        max_flips=modifier.max_flips,
        seed=modifier.seed,
        eval_batch_size=modifier.eval_batch_size,
        training=TrainSettings(lr=modifier.learning_rate),
    )


def build_pools(modifier, model, tokenizer) -> Pools:
    """Disjoint fitness and training windows from the search dataset's train split."""
    seq = modifier.search_seq_len
    n_fit = -(-modifier.fitness_pool_tokens // seq)
    n_train = -(-modifier.train_pool_tokens // seq)
    texts = load_texts(modifier.search_dataset, "train", modifier.search_text_column)
    windows = token_windows(texts, tokenizer, seq, n_fit + n_train, seed=modifier.seed)
    order = torch.randperm(
        len(windows), generator=torch.Generator().manual_seed(modifier.seed)
    )
    fitness, train = windows[order[:n_fit]], windows[order[n_fit:]]
    topk = modifier.fitness_topk if modifier.fitness == "topk_kl" else None
    logger.info(
        f"search pools: {n_fit} fitness and {n_train} training windows of {seq}"
    )
    return Pools.build(model, train, fitness, topk, modifier.eval_batch_size)


def search(modifier, model, store: DatabaseStore) -> Genome:
    """The best genome for the modifier's target; the uniform parent if no
    generations."""
    budget = Budget.from_store(store)
    target_params, target_level = modifier.target(budget.dense_params())
    parent = initial_genome(budget, target_params, level=target_level)
    max_params = target_params if target_params is not None else budget.params(parent)
    logger.info(
        f"search: uniform parent {budget.params(parent):,} params, "
        f"budget {max_params:,}"
    )
    history: list[dict] = []
    best = parent
    if modifier.generations > 0:
        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
        pools = build_pools(modifier, model, tokenizer)
        bench = Workbench(model, store, parent)
        result = run_search(
            bench,
            budget,
            parent,
            max_params,
            pools,
            search_settings(modifier),
            modifier.search_dir,
        )
        best, history = result.best, result.history
        del bench
    write_report(Path(modifier.search_dir), store, parent, best, history)
    return best
