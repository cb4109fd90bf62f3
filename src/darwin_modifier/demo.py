"""The main job on the embedded default: `make demo`.

SmolLM2-135M-Instruct -> DarwinLM recipe through oneshot (database, search, shrink,
save) -> held-out perplexity and KL of dense, uniform (same database, same budget) and
DarwinLM -> vLLM decode speed of dense and DarwinLM side by side -> results/demo.json.
The DarwinLM and uniform checkpoints stay in ``--out`` (``make eval`` runs lm-eval on
them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data import fetch_corpus, fetch_default_model
from darwin_modifier.evaluation.quality import count_params, evaluate, heldout_windows
from darwin_modifier.modifier import DarwinLMModifier
from darwin_modifier.modifier.chain import split_stages
from darwin_modifier.modifier.entry import run_oneshot
from darwin_modifier.pipeline import (
    SearchOutcome,
    load_database,
    materialize,
    plan_of,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="recipes/smollm2_cpu.yaml")
    parser.add_argument("--out", default="results/demo")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--serve-python", default=".venv-serve/bin/python")
    parser.add_argument(
        "--no-serve", action="store_true", help="skip the vLLM speed comparison"
    )
    args = parser.parse_args(argv)
    start = time.time()
    out = Path(args.out)
    dense_dir = fetch_default_model()
    fetch_corpus()

    # 1-3: database, search, shrink, save, all inside oneshot; everything under --out
    darwin = recipe_modifier(args.recipe, out)
    run_oneshot(
        dense_dir,
        [darwin],
        output_dir=out / "darwinlm",
        num_samples=args.calibration_samples,
        seq_len=args.seq_len,
    )

    # quality: dense, uniform (same database and budget), DarwinLM
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    pruned = AutoModelForCausalLM.from_pretrained(out / "darwinlm", dtype=torch.float32)
    store = load_database(darwin.database_dir, dense.config)
    outcome = SearchOutcome.load(darwin.search_dir)
    # saved like the DarwinLM checkpoint (same dtype), for lm-eval and vLLM; then
    # evaluated from the rounded weights, on equal terms
    uniform = materialize(dense, store, outcome.uniform)
    uniform.to(darwin.output_dtype(torch.float32)).save_pretrained(out / "uniform")
    tokenizer.save_pretrained(out / "uniform")
    uniform.float()
    windows = heldout_windows(
        tokenizer, seq_len=args.seq_len, num_windows=args.eval_windows
    )
    quality = evaluate(
        {"dense": dense, "uniform": uniform, "darwinlm": pruned}, windows
    )

    # speed: vLLM in the serve environment, dense and DarwinLM side by side
    speed = None if args.no_serve else measure_speed(args, dense_dir, out)

    result = {
        "wall_s": round(time.time() - start, 1),
        "dense": {
            "params": count_params(dense),
            "ppl": quality["dense"]["ppl"],
        },
        "uniform": {
            "params": count_params(uniform),
            "block_fraction": plan_of(store, outcome.uniform).kept_fraction(),
            **quality["uniform"],
        },
        "darwinlm": {
            "params": count_params(pruned),
            "block_fraction": plan_of(store, outcome.best).kept_fraction(),
            **quality["darwinlm"],
        },
        "generations": len(outcome.history),
    }
    if speed is not None:
        result["dense"]["decode_tok_s"] = speed["latency_b1"]["dense_tok_s"]
        result["darwinlm"]["decode_tok_s"] = speed["latency_b1"]["pruned_tok_s"]
        result["darwinlm"]["throughput_tok_s"] = speed["throughput"]["pruned_tok_s"]
        result["speedup"] = speed["latency_b1"]["speedup"]
        result["throughput_speedup"] = speed["throughput"]["speedup"]
        result["speedup_limit"] = speed["speedup_limit"]
    (out.parent / "demo.json").write_text(json.dumps(result, indent=1))
    print_table(result)
    return result


def recipe_modifier(recipe, out: Path) -> DarwinLMModifier:
    """The recipe's DarwinLMModifier, with its database and search under ``out``
    (so a demo run never reads another run's database)."""
    found = [m for stage in split_stages(recipe) for m in stage.modifiers]
    if len(found) != 1 or not isinstance(found[0], DarwinLMModifier):
        names = [type(m).__name__ for m in found]
        raise ValueError(
            f"the demo runs a recipe with one DarwinLMModifier and nothing else; "
            f"{recipe} has {names} (run other recipes with darwin-modifier compress)"
        )
    return found[0].model_copy(
        update={
            "database_dir": str(out / "database"),
            "search_dir": str(out / "search"),
        }
    )


def measure_speed(args, dense_dir: Path, out: Path) -> dict:
    """vLLM in the serve environment (its own process: it pins other packages)."""
    serve_json = out / "serve.json"
    command = [
        args.serve_python,
        "benchmarks/serve.py",
        "--dense",
        str(dense_dir),
        "--pruned",
        str(out / "darwinlm"),
        "--json",
        str(serve_json),
        "--quick",
    ]
    subprocess.run(command, check=True)
    return json.loads(serve_json.read_text())


def print_table(result: dict) -> None:
    print(f"\n{'model':<10} {'params':>12} {'ppl':>9} {'KL':>8} {'decode tok/s':>13}")
    for name in ("dense", "uniform", "darwinlm"):
        row = result[name]
        kl = f"{row['kl']:.4f}" if "kl" in row else "-"
        speed = f"{row['decode_tok_s']:.1f}" if "decode_tok_s" in row else "-"
        print(f"{name:<10} {row['params']:>12,} {row['ppl']:>9.2f} {kl:>8} {speed:>13}")
    if "speedup" in result:
        print(
            f"decode speedup {result['speedup']:.2f}x, throughput speedup "
            f"{result['throughput_speedup']:.2f}x "
            f"(limit {result['speedup_limit']:.2f}x)"
        )
    print(f"wall time {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
