"""The pruned model as a speculative-decoding draft for its dense parent, on vLLM.

    .venv-serve/bin/python benchmarks/speculative.py --json results/speculative.json \\
        --draft results/demo/darwinlm

Serve environment. The dense model alone, then with the pruned model as its
``draft_model`` for each ``--k`` (draft tokens per step), each engine in its own
spawned process (vLLM's CPU engine binds its process's OpenMP threads). The prompts
are held-out Python-docs windows (acceptance depends on real text, not on random ids),
one request at a time (batch-1 latency, where speculation is meant to help), greedy.
Reported: end-to-end decode tokens/s and its ratio to the dense model alone; the
acceptance rate (accepted / drafted tokens) and mean accepted tokens per step from
vLLM's own counters; and whether the greedy output equals the dense model's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from darwin_modifier.data import fetch_default_model
from darwin_modifier.latency.measure import CPU_ENV, device_name, in_own_process

COUNTERS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
}


def prompts_from_docs(model_dir: str, count: int, length: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from darwin_modifier.evaluation.quality import heldout_windows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    windows = heldout_windows(tokenizer, seq_len=length, num_windows=count)
    return [w.tolist() for w in windows]


def run_engine(model: str, draft: str | None, k: int, args: dict) -> dict:
    """One engine: every prompt on its own, timed; vLLM's spec-decode counters."""
    from vllm import LLM

    from darwin_modifier.evaluation.vllm_metrics import timed_generate

    speculative = None
    if draft is not None:
        speculative = {
            "method": "draft_model",
            "model": draft,
            "num_speculative_tokens": k,
        }
    llm = LLM(
        model=model,
        dtype="bfloat16",
        enforce_eager=args["enforce_eager"],
        max_model_len=args["prompt_len"] + args["new_tokens"] + k + 8,
        max_num_seqs=1,
        seed=0,
        speculative_config=speculative,
        disable_log_stats=False,
        gpu_memory_utilization=0.3,
    )
    try:
        timed_generate(llm, args["prompts"][:1], 8)  # warm-up
        seconds, outputs = 0.0, []
        for prompt in args["prompts"]:
            took, out = timed_generate(llm, [prompt], args["new_tokens"])
            seconds += took
            outputs.append(list(out[0].outputs[0].token_ids))
        counters = {
            COUNTERS[m.name]: m.value for m in llm.get_metrics() if m.name in COUNTERS
        }
    finally:
        llm.llm_engine.engine_core.shutdown()
    return {"seconds": seconds, "outputs": outputs, **counters}


def engine_run(model: str, draft: str | None, k: int, args: dict) -> dict:
    status, value = in_own_process(run_engine, model, draft, k, args)
    if status != "ok":
        raise RuntimeError(value)
    return value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", required=True)
    parser.add_argument("--draft", default="results/demo/darwinlm")
    parser.add_argument("--model", help="the dense target (default: embedded SmolLM2)")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--compiled", action="store_true")
    args = parser.parse_args(argv)
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    started = time.time()
    model = str(Path(args.model or fetch_default_model()).resolve())
    draft = str(Path(args.draft).resolve())
    run = {
        "prompts": prompts_from_docs(model, args.prompts, args.prompt_len),
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "enforce_eager": not args.compiled,
    }
    tokens = args.prompts * args.new_tokens
    alone = engine_run(model, None, 0, run)
    result = {
        "model": model,
        "draft": draft,
        "device": device_name(),
        "settings": {k: v for k, v in run.items() if k != "prompts"},
        "dense": {"tok_s": tokens / alone["seconds"], "seconds": alone["seconds"]},
    }
    for k in args.k:
        try:
            spec = engine_run(model, draft, k, run)
        except RuntimeError as err:
            result[f"k{k}"] = {"error": str(err)}
            print(f"k={k}: vLLM refused draft-model speculation: {err}")
            continue
        drafted = spec.get("draft_tokens", 0)
        result[f"k{k}"] = {
            "tok_s": tokens / spec["seconds"],
            "speedup": alone["seconds"] / spec["seconds"],
            "acceptance_rate": spec.get("accepted_tokens", 0) / drafted
            if drafted
            else None,
            "accepted_per_step": spec.get("accepted_tokens", 0) / spec["drafts"]
            if spec.get("drafts")
            else None,
            "same_output_as_dense": spec["outputs"] == alone["outputs"],
            **{name: spec.get(name) for name in COUNTERS.values()},
        }
    result["wall_s"] = time.time() - started
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\n{'setup':<10} {'tok/s':>8} {'speedup':>8} {'accept':>7} {'per step':>9}")
    print(f"{'dense':<10} {result['dense']['tok_s']:>8.1f} {'1.00x':>8}")
    for k in args.k:
        row = result[f"k{k}"]
        if "error" in row:
            print(f"{'k=' + str(k):<10} error: {row['error'][:60]}")
            continue
        rate, per_step = row["acceptance_rate"], row["accepted_per_step"]
        print(
            f"{'k=' + str(k):<10} {row['tok_s']:>8.1f} {row['speedup']:>7.2f}x "
            f"{'-' if rate is None else format(rate, '.1%'):>7} "
            f"{'-' if per_step is None else format(per_step, '.2f'):>9}"
            f"{'' if row['same_output_as_dense'] else '  (output differs)'}"
        )
    print(
        f"batch 1, {args.prompts} prompts x {args.new_tokens} tokens, {device_name()}"
    )
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
