"""One search generation on SmolLM2 with 1 and 2 CPU processes (torchrun, gloo, one
thread each), side by side, and the critical-path model of the shipped schedules.

    python benchmarks/distributed.py --json results/distributed.json

1. A SmolLM2 database is built once (one process); then the same search (one
   generation) runs under ``torchrun --nproc-per-node 1`` and ``2``. Each run reports
   its wall time for the token pools (built on every rank: duplicated work) and for the
   generation (candidates scored round-robin). Both runs must end at the same genome.
2. The critical path of one generation of each shipped recipe's schedule on 1, 4 and 8
   GPUs, in light-training steps: per stage, rounds = ceil(candidates / ranks), each
   round one candidate's training windows plus its fitness windows at a third of a step
   (a forward pass of the forward + backward). The same model gives the CPU schedule's
   ideal speedup, printed next to the measured one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import MEASURED_SEARCH, build_database  # this folder: a sibling script

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("llama2_7b_to_2.7b", "llama31_8b_to_4.6b", "qwen25_14b_to_8.4b")
FORWARD_SHARE = 1 / 3  # a forward window against a training step (forward + backward)

# memory.py's measured search (and its database), with offspring to share out
SEARCH = {
    **MEASURED_SEARCH,
    "offspring": 4,
    "selection_stages": [
        {"survivors": 2, "train_tokens": 512, "fitness_tokens": 512},
        {"survivors": 1, "train_tokens": 1024, "fitness_tokens": 1024},
    ],
    "fitness_pool_tokens": 4096,
}


def critical_path(settings: dict, ranks: int) -> dict:
    """Training steps on the slowest rank in one generation (see the module doc)."""
    seq = settings["search_seq_len"]
    alive, train_steps, forward_windows = settings["offspring"], 0.0, 0
    stages = settings["selection_stages"]
    for index, stage in enumerate(stages):
        if index == len(stages) - 1:
            alive += 1  # the parent joins the last stage
        rounds = math.ceil(alive / ranks)
        train_steps += rounds * stage["train_tokens"] / seq
        forward_windows += rounds * math.ceil(stage["fitness_tokens"] / seq)
        alive = stage["survivors"]
    return {
        "train_steps": round(train_steps, 2),
        "fitness_windows": forward_windows,
        "step_equivalents": round(train_steps + FORWARD_SHARE * forward_windows, 2),
    }


def recipe_models() -> dict:
    import yaml

    out = {}
    for recipe in RECIPES:
        text = (REPO / "recipes" / f"{recipe}.yaml").read_text()
        stage = next(iter(yaml.safe_load(text).values()))
        settings = next(iter(stage.values()))["DarwinLMModifier"]
        paths = {n: critical_path(settings, n) for n in (1, 4, 8)}
        one = paths[1]["step_equivalents"]
        for path in paths.values():
            path["speedup"] = round(one / path["step_equivalents"], 2)
        out[recipe] = paths
    return out


def worker(database_dir: Path, search_dir: Path, out: Path) -> None:
    """One rank of the measured search (started by torchrun)."""
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin_modifier.data import fetch_default_model
    from darwin_modifier.distributed import barrier, init_from_env, is_main
    from darwin_modifier.pipeline import DarwinLMConfig, load_database, search

    init_from_env()
    torch.set_num_threads(1)
    path = fetch_default_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = DarwinLMConfig(
        **SEARCH, database_dir=str(database_dir), search_dir=str(search_dir)
    )
    store = load_database(database_dir, model.config)
    step = importlib.import_module("darwin_modifier.pipeline.search")
    build_pools, pools_s = step.build_pools, []

    def timed_pools(*args, **kwargs):
        start = time.perf_counter()
        pools = build_pools(*args, **kwargs)
        pools_s.append(time.perf_counter() - start)
        return pools

    step.build_pools = timed_pools
    barrier()
    start = time.perf_counter()
    outcome = search(model, store, config, tokenizer=tokenizer)
    barrier()
    total = time.perf_counter() - start
    if is_main():
        result = {
            "total_s": round(total, 2),
            "pools_s": round(pools_s[0], 2),
            "generation_s": round(total - pools_s[0], 2),
            "genome": outcome.best.to_dict(),
        }
        out.write_text(json.dumps(result))


def measure(ranks: int, database: Path, tmp: Path) -> dict:
    out = tmp / f"ranks{ranks}.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={ranks}",
        __file__,
        "--worker",
        str(database),
        str(tmp / f"search{ranks}"),
        str(out),
    ]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="where to write the results (required)")
    parser.add_argument("--worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if not args.json:
        parser.error("--json PATH is required")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_database(tmp / "database")
        runs = {n: measure(n, tmp / "database", tmp) for n in (1, 2)}
    ideal = (
        critical_path(SEARCH, 1)["step_equivalents"]
        / critical_path(SEARCH, 2)["step_equivalents"]
    )
    result = {
        "machine": f"{os.cpu_count()} CPU cores, gloo, 1 thread per process",
        "search": SEARCH,
        "runs": {str(n): run for n, run in runs.items()},
        "same_genome": runs[1]["genome"] == runs[2]["genome"],
        "generation_speedup": round(
            runs[1]["generation_s"] / runs[2]["generation_s"], 2
        ),
        "total_speedup": round(runs[1]["total_s"] / runs[2]["total_s"], 2),
        "generation_speedup_model": round(ideal, 2),
        "critical_path": recipe_models(),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))

    print(f"{'processes':>9} {'pools s':>8} {'generation s':>13} {'total s':>8}")
    for n, run in runs.items():
        print(
            f"{n:>9} {run['pools_s']:>8.1f} {run['generation_s']:>13.1f} "
            f"{run['total_s']:>8.1f}"
        )
    print(
        f"generation speedup {result['generation_speedup']:.2f} "
        f"(model {result['generation_speedup_model']:.2f}), total "
        f"{result['total_speedup']:.2f}, same genome: {result['same_genome']}"
    )
    print(
        f"\n{'recipe':<20} "
        + " ".join(f"{n} GPU steps (x)".rjust(18) for n in (1, 4, 8))
    )
    for recipe, paths in result["critical_path"].items():
        cells = [
            f"{p['step_equivalents']:>10.0f} ({p['speedup']:.2f}x)"
            for p in paths.values()
        ]
        print(f"{recipe:<20} " + " ".join(c.rjust(18) for c in cells))


if __name__ == "__main__":
    main()
