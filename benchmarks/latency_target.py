"""Speed as the target: searches with ``target_speedup``, measured on vLLM.

    python benchmarks/latency_target.py --json results/latency_target.json

On the embedded SmolLM2, with the demo recipe's search schedule: one database, its
latency table (every level timed on vLLM through the serve environment:
``--serve-python``, default ``.venv-serve/bin/python``), then per target speedup
(decode at batch 16) two searches:

- ``speed``: ``target_speedup`` (the budget is the blocks' measured time);
- ``params``: a parameter target chosen so that its first parent has the same
  predicted speed (the table's prediction of the near-uniform parameter parent),
  i.e. what a user who targets parameters would pick for that speed.

Every result is saved in bf16 and timed on vLLM side by side with the dense model in
one run (dense first and last; its mean is the reference), and its held-out
perplexity and KL to dense measured with transformers on the same windows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data import fetch_default_model
from darwin_modifier.evaluation.quality import count_params, evaluate, heldout_windows
from darwin_modifier.latency.build import latency_table, time_on_vllm
from darwin_modifier.modifier.entry import build_database
from darwin_modifier.pipeline import DarwinLMConfig, load_database, materialize, search
from darwin_modifier.search.budget import Budget, for_target
from darwin_modifier.search.fitness import TrainedKL

RECIPE = Path(__file__).parents[1] / "recipes" / "smollm2_cpu.yaml"
# the demo's own choice of levels and search; sizes and directories are ours
NOT_SCHEDULE = ("target_fraction", "database_dir", "search_dir", "save_dtype")


def demo_schedule() -> dict:
    recipe = yaml.safe_load(RECIPE.read_text())
    settings = recipe["darwinlm_stage"]["darwinlm_modifiers"]["DarwinLMModifier"]
    return {k: v for k, v in settings.items() if k not in NOT_SCHEDULE}


def params_for_speed(budget: Budget, table, speedup: float, mode: str) -> int:
    """The parameter target whose first parent the table predicts at ``speedup``."""
    low, high = 1, budget.dense_params()
    while high - low > budget.dense_params() // 10_000:
        middle = (low + high) // 2
        try:
            parent = for_target(budget, middle)
        except ValueError:
            low = middle
            continue
        if table.speedup(parent, mode) >= speedup:
            low = middle
        else:
            high = middle
    return low


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", required=True)
    parser.add_argument("--work", default="results/latency_target")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.3, 1.6])
    parser.add_argument("--serve-python", default=".venv-serve/bin/python")
    parser.add_argument("--database", help="an existing SmolLM2 database to reuse")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="time vLLM with its compile (default on CPU: eager, which starts in "
        "20 s instead of 2 min and runs a step about as fast)",
    )
    parser.add_argument("--eval-windows", type=int, default=64)
    args = parser.parse_args(argv)
    started = time.time()
    work = Path(args.work)
    model_dir = fetch_default_model()
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    schedule = demo_schedule()
    speed = dict(
        serve_python=args.serve_python,
        latency_enforce_eager=not args.compiled,
        speedup_mode="decode",
        latency_batch=16,
    )
    root = Path(args.database) if args.database else work / "database"
    try:
        store = load_database(root, dense.config)
    except (FileNotFoundError, ValueError):
        store = build_database(
            model_dir, root, gqa_mode=schedule["gqa_mode"], search_dir=str(work / "db")
        )
    common = dict(schedule, database_dir=str(root), **speed)
    table = latency_table(store, dense.config, DarwinLMConfig(**common))
    print(table.format(store.ladders))
    mode = "decode"
    params_budget = Budget.from_store(store)

    genomes, search_s, targets = {}, {}, {}
    for speedup in args.targets:
        matched = params_for_speed(params_budget, table, speedup, mode)
        for kind, target in (
            ("speed", dict(target_speedup=speedup)),
            ("params", dict(target_params=matched)),
        ):
            name = f"{kind}_{speedup}"
            config = DarwinLMConfig(
                **common, **target, search_dir=str(work / f"search_{name}")
            )
            t0 = time.time()
            genomes[name] = search(dense, store, config, TrainedKL, tokenizer).best
            search_s[name] = time.time() - t0
            targets[name] = {"target_speedup": speedup, **target}

    models = {"dense": dense}
    paths = []
    for name, genome in genomes.items():
        models[name] = materialize(dense, store, genome)
        path = work / "models" / name
        # served in bf16, evaluated in fp32: a second copy from the database
        materialize(dense, store, genome).to(torch.bfloat16).save_pretrained(path)
        paths.append({"name": name, "path": str(path.resolve())})
    dense_path = str(Path(model_dir).resolve())
    timed = [{"name": "dense", "path": dense_path}, *paths]
    timed.append({"name": "dense_again", "path": dense_path})
    settings = DarwinLMConfig(**common).latency_settings()
    times = time_on_vllm(args.serve_python, timed, settings, work / "timing")
    dense_s = (times["dense"]["decode_s"] + times["dense_again"]["decode_s"]) / 2

    windows = heldout_windows(tokenizer, seq_len=512, num_windows=args.eval_windows)
    quality = evaluate(models, windows)
    result = {
        "settings": {"schedule": schedule, **speed, "latency": settings},
        "table": {"costs": table.costs, "check": table.check, **table.identity},
        "dense": {
            **quality["dense"],
            "params": count_params(dense),
            "decode_s": dense_s,
            "decode_drift": times["dense_again"]["decode_s"]
            / times["dense"]["decode_s"]
            - 1,
        },
        "search_s": search_s,
    }
    for name, genome in genomes.items():
        measured = dense_s / times[name]["decode_s"]
        predicted = table.speedup(genome, mode)
        target = targets[name]["target_speedup"]
        result[name] = {
            **targets[name],
            **quality[name],
            "params": count_params(models[name]),
            "predicted_speedup": predicted,
            "measured_speedup": measured,
            "measured_vs_target": measured / target - 1,
            "within_5pct": abs(measured / target - 1) <= 0.05,
            "genome": genome.to_dict(),
        }
    result["wall_s"] = time.time() - started
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print_table(result, genomes)
    return result


def print_table(result: dict, names) -> None:
    print(
        f"\n{'model':<12} {'params':>11} {'predicted':>9} {'measured':>9} "
        f"{'vs target':>9} {'ppl':>8} {'KL':>7}"
    )
    dense = result["dense"]
    print(
        f"{'dense':<12} {dense['params']:>11,} {'1.00x':>9} {'1.00x':>9} {'':>9} "
        f"{dense['ppl']:>8.2f} {0:>7.3f}"
    )
    for name in names:
        row = result[name]
        print(
            f"{name:<12} {row['params']:>11,} {row['predicted_speedup']:>8.2f}x "
            f"{row['measured_speedup']:>8.2f}x {row['measured_vs_target']:>+9.1%} "
            f"{row['ppl']:>8.2f} {row['kl']:>7.3f}"
        )
    print(
        f"decode step at batch 16, dense {dense['decode_s'] * 1e3:.2f} ms "
        f"(drift over the run {dense['decode_drift']:+.1%}); "
        f"{result['table']['engine']} on {result['table']['device']}"
    )


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
