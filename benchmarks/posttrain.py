"""Post-compression training: DarwinLM vs uniform at the same size and token budget.

    python benchmarks/posttrain.py --demo results/demo --json results/posttrain.json

Takes the demo's outputs (the DarwinLM checkpoint, the database and the uniform genome
of the same budget), trains each model with cross-entropy and with distillation from the
dense model on the same training windows, and reports held-out perplexity and KL to
dense before and after. The question it answers: does DarwinLM stay ahead of uniform
after training?

Then the DarwinLM checkpoint (the demo's, untrained) is quantized to INT8 W8A8 with
LLM Compressor's ``QuantizationModifier`` and served by vLLM (the serve environment's
interpreter, ``--serve-python``) next to the unquantized checkpoint: speed and held-out
perplexity from vLLM's prompt logprobs, side by side (``benchmarks/serve.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data import fetch_default_model
from darwin_modifier.data.windows import load_texts, token_windows
from darwin_modifier.evaluation.quality import evaluate, heldout_windows
from darwin_modifier.pipeline import SearchOutcome, load_database, materialize
from darwin_modifier.training.config import PostTrainConfig
from darwin_modifier.training.posttrain import post_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo", default="results/demo", help="make demo's output dir")
    parser.add_argument("--json", required=True)
    parser.add_argument("--tokens", type=int, default=32_768)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--work", default="results/posttrain")
    parser.add_argument("--serve-python", default=".venv-serve/bin/python")
    parser.add_argument(
        "--no-quantized", action="store_true", help="skip the W8A8 + vLLM part"
    )
    args = parser.parse_args()
    start = time.time()
    demo = Path(args.demo)
    dense_dir = fetch_default_model()
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    store = load_database(demo / "database", dense.config)
    uniform_genome = SearchOutcome.load(demo / "search").uniform

    def fresh(name: str):
        if name == "darwinlm":
            return AutoModelForCausalLM.from_pretrained(
                demo / "darwinlm", dtype=torch.float32
            )
        return materialize(dense, store, uniform_genome)

    texts = load_texts("python-docs", "train")
    windows = token_windows(
        texts, tokenizer, args.seq_len, args.tokens // args.seq_len, 7
    )
    heldout = heldout_windows(tokenizer, seq_len=512, num_windows=args.eval_windows)
    optim = dict(
        learning_rate=args.lr, warmup_steps=8, schedule="cosine", max_grad_norm=1.0
    )
    report: dict = {"tokens": args.tokens, "lr": args.lr, "seq_len": args.seq_len}
    for name in ("uniform", "darwinlm"):
        before = evaluate({"dense": dense, name: fresh(name)}, heldout)[name]
        report[name] = {"before": before}
        for loss in ("ce", "kd"):
            model = fresh(name)
            settings = PostTrainConfig(tokens=args.tokens, loss=loss, **optim)
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                post_train(model, windows, settings, tmp, teacher=dense)
            after = evaluate({"dense": dense, name: model}, heldout)[name]
            report[name][loss] = {**after, "train_s": time.time() - t0}
    report["darwinlm_ahead_after_training"] = all(
        report["darwinlm"][loss]["ppl"] < report["uniform"][loss]["ppl"]
        for loss in ("ce", "kd")
    )
    if not args.no_quantized:
        report["quantized"] = quantized_under_vllm(args, demo / "darwinlm", heldout)
    report["wall_s"] = time.time() - start
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\n{'model':<10} {'stage':<8} {'ppl':>8} {'KL':>8}")
    for name in ("uniform", "darwinlm"):
        for stage in ("before", "ce", "kd"):
            row = report[name][stage]
            print(f"{name:<10} {stage:<8} {row['ppl']:>8.2f} {row['kl']:>8.4f}")
    print(f"DarwinLM ahead after training: {report['darwinlm_ahead_after_training']}")
    if "quantized" in report:
        q = report["quantized"]
        vllm, hf = q["vllm_ppl"], q["transformers_ppl"]
        print(
            f"W8A8 under vLLM: throughput x{q['throughput_speedup']:.2f}, decode b1 "
            f"x{q['decode_speedup']:.2f}, held-out ppl {vllm['unquantized']:.2f} -> "
            f"{vllm['w8a8']:.2f} (transformers {hf['unquantized']:.2f} -> "
            f"{hf['w8a8']:.2f})"
        )


def quantized_under_vllm(args, pruned: Path, heldout) -> dict:
    """W8A8 copy of ``pruned`` (LLM Compressor), then vLLM: both side by side."""
    from llmcompressor.modifiers.quantization import QuantizationModifier

    from darwin_modifier.modifier.entry import run_oneshot

    work = Path(args.work)
    quantized = work / "darwinlm_w8a8"
    shutil.rmtree(quantized, ignore_errors=True)  # never a copy of an older demo
    recipe = QuantizationModifier(scheme="W8A8", targets=["Linear"], ignore=["lm_head"])
    run_oneshot(pruned, [recipe], quantized, num_samples=64, seq_len=512)
    models = {
        name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        for name, path in (("unquantized", pruned), ("w8a8", quantized))
    }
    transformers_ppl = evaluate(models, heldout, reference=None)
    serve_json = work / "serve_w8a8.json"
    command = [
        args.serve_python,
        "benchmarks/serve.py",
        "--dense",
        str(pruned),
        "--pruned",
        str(quantized),
        "--labels",
        "unquantized,w8a8",
        "--no-limit",
        "--ppl-windows",
        str(args.eval_windows),
        "--json",
        str(serve_json),
    ]
    subprocess.run(command, check=True)
    speed = json.loads(serve_json.read_text())
    return {
        "checkpoint": str(quantized),
        "throughput_tok_s": {
            "unquantized": speed["throughput"]["dense_tok_s"],
            "w8a8": speed["throughput"]["pruned_tok_s"],
        },
        "decode_b1_tok_s": {
            "unquantized": speed["latency_b1"]["dense_tok_s"],
            "w8a8": speed["latency_b1"]["pruned_tok_s"],
        },
        "throughput_speedup": speed["throughput"]["speedup"],
        "decode_speedup": speed["latency_b1"]["speedup"],
        "vllm_ppl": {
            "unquantized": speed["perplexity"]["dense"]["ppl"],
            "w8a8": speed["perplexity"]["pruned"]["ppl"],
        },
        "vllm_dtype": speed["settings"]["dtype"],
        "transformers_ppl": {k: v["ppl"] for k, v in transformers_ppl.items()},
        "serve_json": str(serve_json),
    }


if __name__ == "__main__":
    main()
