"""vLLM's own benchmarks on a dense checkpoint and its shrunk copy, side by side.

    python benchmarks/vllm_bench.py --dense DIR --pruned DIR --json out.json

Run it in the serve environment. Each measurement is ``vllm bench throughput``
(random prompts, all submitted at once) or ``vllm bench latency`` (one batch end to
end), exactly as a user types it, with ``--output-json``; the shrunk model is found by
vLLM through the package's plugin entry point. What this script adds is the side by
side: the models alternate (dense, pruned, pruned, dense, ...) so that background load
on a shared machine falls on both, and the table gives ratios.

What ``vllm bench`` cannot do, and ``benchmarks/serve.py``'s own harness does: keep
both engines alive between measurements (every ``vllm bench`` call starts and warms a
new engine, so rounds here cost minutes), record foreign CPU load per sample, split
time to first token from decode, and score perplexity from prompt logprobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from serving_harness import count_params, device_info, limit_rule


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", required=True)
    p.add_argument("--pruned", required=True)
    p.add_argument("--json", help="write the result here")
    p.add_argument("--rounds", type=int, default=2, help="alternations per benchmark")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--num-prompts", type=int, default=64, help="throughput prompts")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--latency-batch", type=int, default=1)
    p.add_argument("--latency-iters", type=int, default=5)
    p.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE")
    p.add_argument(
        "--enforce-eager",
        action="store_true",
        help="skip torch.compile / graphs (faster start, slower steps)",
    )
    return p.parse_args(argv)


def vllm_bench(kind: str, model: str, args, out_json: Path) -> dict:
    """One ``vllm bench throughput|latency`` run; its ``--output-json``."""
    command = [str(Path(sys.executable).with_name("vllm")), "bench", kind]
    command += ["--model", model, "--dtype", args.dtype, "--seed", "0"]
    command += ["--input-len", str(args.input_len)]
    command += ["--output-len", str(args.output_len)]
    # random prompts may re-tokenize a few tokens longer than --input-len
    command += ["--max-model-len", str(args.input_len + args.output_len + 64)]
    if kind == "throughput":
        command += ["--dataset-name", "random", "--num-prompts", str(args.num_prompts)]
        command += ["--random-input-len", str(args.input_len)]  # the random dataset's
        command += ["--random-output-len", str(args.output_len)]  # own (and warm-up's)
        command += ["--random-range-ratio", "0"]
    else:
        command += ["--batch-size", str(args.latency_batch)]
        command += ["--num-iters", str(args.latency_iters), "--num-iters-warmup", "1"]
    if args.enforce_eager:
        command.append("--enforce-eager")
    command += ["--output-json", str(out_json)]
    defaults = {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    env = {**defaults, **os.environ, "VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-4000:]}")
    result = json.loads(out_json.read_text())
    result["command"] = ["vllm", *command[1:]]
    return result


def output_tok_s(kind: str, result: dict, args) -> float:
    """Generated tokens per second (``vllm bench throughput``'s JSON counts prompt
    tokens too; its random prompts have exactly ``output_len`` new tokens each)."""
    if kind == "throughput":
        return result["num_requests"] * args.output_len / result["elapsed_time"]
    return args.latency_batch * args.output_len / result["avg_latency"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    models = {"dense": args.dense, "pruned": args.pruned}
    samples = {
        kind: {name: [] for name in models} for kind in ("throughput", "latency")
    }
    with tempfile.TemporaryDirectory() as tmp:
        for kind in samples:
            for round_ in range(args.rounds):
                order = list(models) if round_ % 2 == 0 else list(models)[::-1]
                for name in order:
                    out = Path(tmp) / f"{kind}_{name}_{round_}.json"
                    result = vllm_bench(kind, models[name], args, out)
                    result["output_tok_s"] = output_tok_s(kind, result, args)
                    samples[kind][name].append(result)
                    print(f"{kind:<10} {name:<6} {result['output_tok_s']:9.1f} tok/s")
    params = {name: count_params(path) for name, path in models.items()}
    limit = params["dense"] / params["pruned"]
    report = {"device": device_info(), "settings": vars(args), "params": params}
    for kind, per_model in samples.items():
        best = {n: max(s["output_tok_s"] for s in v) for n, v in per_model.items()}
        report[kind] = {
            "dense_tok_s": best["dense"],
            "pruned_tok_s": best["pruned"],
            "speedup": best["pruned"] / best["dense"],
            "samples": per_model,
        }
    report["speedup_limit"] = limit
    report["limit_rule"] = limit_rule(report["throughput"]["speedup"], limit)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(
        f"\n{'vllm bench':<12} {'dense tok/s':>12} {'pruned tok/s':>13} {'speedup':>8}"
    )
    for kind in samples:
        row = report[kind]
        print(
            f"{kind:<12} {row['dense_tok_s']:>12.1f} {row['pruned_tok_s']:>13.1f} "
            f"{row['speedup']:>7.2f}x"
        )
    print(f"parameter-ratio limit {limit:.2f}x")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
