"""Quality at equal size: dense vs uniform vs DarwinLM vs the EvoPress-style ablation.

    python benchmarks/quality.py --json results/quality.json [--scale paper]

One database (built once, cached in --work), then two searches from the same uniform
parent and budget: DarwinLM (training-aware selection, ``TrainedKL``) and the ablation
without light training (``untrained_kl``: EvoPress-style selection on the same
windows). All four models are
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
from darwin_modifier.evaluation.quality import count_params, evaluate, heldout_windows
from darwin_modifier.modifier.entry import build_database
from darwin_modifier.pipeline import (
    DarwinLMConfig,
    load_database,
    materialize,
    plan_of,
    search,
)
from darwin_modifier.search.fitness import TrainedKL, untrained_kl

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

    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    store = _database(model_dir, work, args.gqa_mode, dense.config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    genomes, times = {}, {}
    for name, fitness in (("darwinlm", TrainedKL), ("evopress_ablation", untrained_kl)):
        config = DarwinLMConfig(**common, search_dir=str(work / f"search_{name}"))
        t0 = time.time()
        outcome = search(dense, store, config, fitness, tokenizer)
        times[name] = time.time() - t0
        genomes.setdefault("uniform", outcome.uniform)  # same parent and budget
        genomes[name] = outcome.best

    models = {"dense": dense}
    for name, genome in genomes.items():
        models[name] = materialize(dense, store, genome)
    windows = heldout_windows(tokenizer, seq_len=512, num_windows=args.eval_windows)
    quality = evaluate(models, windows)

    result = {"settings": {**common, "scale": args.scale}, "search_s": times}
    for name, model in models.items():
        result[name] = {**quality[name], "params": count_params(model)}
        if name in genomes:
            result[name]["block_params"] = plan_of(store, genomes[name]).block_params()
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


def _database(model_dir, work: Path, gqa_mode: str, config):
    root = work / "database"
    try:
        return load_database(root, config)  # built by an earlier run
    except (FileNotFoundError, ValueError):
        pass
    return build_database(
        model_dir, root, gqa_mode=gqa_mode, search_dir=str(work / "db_only")
    )


if __name__ == "__main__":
    main()
