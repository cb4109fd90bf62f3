"""Quality at equal size: dense vs uniform vs DarwinLM vs the EvoPress-style ablation.

    python benchmarks/quality.py --json results/quality.json [--scale paper]

One database (built once, cached in --work), then two searches from the same uniform
parent and budget: DarwinLM (training-aware selection) and the ablation without light
training (every stage's train_tokens = 0, i.e. EvoPress selection). All four models are
measured on the same held-out windows: perplexity and KL(dense ‖ model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data import fetch_default_model
from darwin_modifier.database.assemble import assemble
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.evaluation.quality import count_params, evaluate, heldout_windows
from darwin_modifier.format.shrink import shrink
from darwin_modifier.modifier import DarwinLMModifier
from darwin_modifier.modifier.entry import build_database
from darwin_modifier.modifier.search_step import search
from darwin_modifier.search.genome import Budget, initial_genome

CPU_SCHEDULE = dict(
    generations=16,
    offspring=8,
    selection_stages=[
        {"survivors": 4, "train_tokens": 512, "fitness_tokens": 1024},
        {"survivors": 2, "train_tokens": 1024, "fitness_tokens": 2048},
        {"survivors": 1, "train_tokens": 2048, "fitness_tokens": 4096},
    ],
    search_seq_len=256,
    fitness_pool_tokens=16384,
    train_pool_tokens=65536,
    fitness="topk_kl",
)
PAPER_SCHEDULE = dict(search_seq_len=4096)  # the modifier's defaults are the paper's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", required=True)
    parser.add_argument("--model", default=None, help="default: embedded SmolLM2")
    parser.add_argument("--work", default="results/quality")
    parser.add_argument("--target-fraction", type=float, default=0.5)
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--generations", type=int, default=None)
    parser.add_argument("--gqa-mode", default="kv_group")
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parser.parse_args()
    start = time.time()
    work = Path(args.work)
    model_dir = args.model or fetch_default_model()
    schedule = dict(CPU_SCHEDULE if args.scale == "cpu" else PAPER_SCHEDULE)
    if args.generations is not None:
        schedule["generations"] = args.generations
    common = dict(
        target_fraction=args.target_fraction,
        gqa_mode=args.gqa_mode,
        database_dir=str(work / "database"),
        **schedule,
    )

    store = _database(model_dir, work, args.gqa_mode)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    budget = Budget.from_store(store)
    target = int(args.target_fraction * budget.dense_params())
    uniform_genome = initial_genome(budget, target)

    genomes, times = {"uniform": uniform_genome}, {}
    for name, train in (("darwinlm", True), ("evopress_ablation", False)):
        stages = (
            [
                {**stage, "train_tokens": stage["train_tokens"] if train else 0}
                for stage in common["selection_stages"]
            ]
            if "selection_stages" in common
            else None
        )
        settings = {**common, "search_dir": str(work / f"search_{name}")}
        if stages is not None:
            settings["selection_stages"] = stages
        t0 = time.time()
        genomes[name] = search(DarwinLMModifier(**settings), dense, store)
        times[name] = time.time() - t0

    models = {"dense": dense}
    for name, genome in genomes.items():
        models[name] = shrink(dense, *assemble(store, genome.attn, genome.mlp))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    windows = heldout_windows(tokenizer, seq_len=512, num_windows=args.eval_windows)
    quality = evaluate(models, windows)

    result = {"settings": {**common, "scale": args.scale}, "search_s": times}
    for name, model in models.items():
        result[name] = {**quality[name], "params": count_params(model)}
        if name in genomes:
            result[name]["block_params"] = budget.params(genomes[name])
    uniform, darwin = result["uniform"], result["darwinlm"]
    result["ppl_ratio"] = darwin["ppl"] / uniform["ppl"]
    result["kl_ratio"] = darwin["kl"] / uniform["kl"]
    result["bar_met"] = result["ppl_ratio"] <= 0.5 and result["kl_ratio"] <= 0.5
    result["wall_s"] = time.time() - start
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\n{'model':<18} {'params':>12} {'block params':>13} {'ppl':>9} {'KL':>8}")
    for name in models:
        row = result[name]
        blocks = f"{row['block_params']:,}" if "block_params" in row else "-"
        print(
            f"{name:<18} {row['params']:>12,} {blocks:>13} "
            f"{row['ppl']:>9.2f} {row['kl']:>8.4f}"
        )
    print(
        f"DarwinLM / uniform: ppl x{result['ppl_ratio']:.2f}, "
        f"KL x{result['kl_ratio']:.2f} "
        f"(bar: both <= 0.5 -> {'met' if result['bar_met'] else 'NOT met'})"
    )


def _database(model_dir, work: Path, gqa_mode: str) -> DatabaseStore:
    root = work / "database"
    if (root / "manifest.json").exists():
        store = DatabaseStore.open(root)
        if store.is_complete():
            return store
    return build_database(
        model_dir, root, gqa_mode=gqa_mode, search_dir=str(work / "db_only")
    )


if __name__ == "__main__":
    main()
