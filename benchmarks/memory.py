"""The memory plan of the shipped recipes, and the plan held against a measured run.

    python benchmarks/memory.py --json results/memory.json [--no-measure]

1. Per shipped recipe (Llama-2-7B, Llama-3.1-8B, Qwen-2.5-14B; their ``config.json``
   from ``tests/memory/configs``, no hub access), the planned peak of each phase at
   the recipes' calibration (2048 samples x 4096 tokens), and whether it fits one
   80 GB GPU (``fits_80gb``) or one 141 GB GPU (``fits_141gb``).
2. A real search on SmolLM2 on this CPU (database built first, in its own process):
   peak RSS above the process's baseline, next to the plan's estimate of the same
   phase (``measured_over_planned``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "memory" / "configs"
RECIPES = {  # recipe -> (config, GPU it must fit)
    "llama2_7b_to_2.7b": ("llama2_7b", 80),
    "llama31_8b_to_4.6b": ("llama31_8b", 80),
    "qwen25_14b_to_8.4b": ("qwen25_14b", 141),
}
CALIBRATION = (2048, 4096)  # samples x tokens, as the recipes' comments say

# The measured SmolLM2 search: small, but every part of the phase is there.
MEASURED_SEARCH = dict(
    target_fraction=0.5,
    gqa_mode="kv_group",
    num_levels=5,
    mlp_multiple=32,
    generations=1,
    offspring=2,
    selection_stages=[{"survivors": 1, "train_tokens": 512, "fitness_tokens": 1024}],
    fitness="kl",
    search_seq_len=256,
    fitness_pool_tokens=8192,
    train_pool_tokens=4096,
)


def plan_recipes() -> dict:
    from darwin_modifier.memory import ModelSpec, plan_run, refusal
    from darwin_modifier.modifier.chain import split_stages

    results = {}
    samples, seq = CALIBRATION
    for recipe, (config_name, gpu_gb) in RECIPES.items():
        (modifier,) = split_stages(REPO / "recipes" / f"{recipe}.yaml")[0].modifiers
        spec = ModelSpec.from_pretrained(str(CONFIGS / config_name))
        run = dict(
            calibration_tokens=samples * seq,
            calibration_seq_len=seq,
            device="cuda",
            device_capacity=int(gpu_gb * 1e9),
            host_capacity=None,
        )
        plan = plan_run(spec, modifier, **run)
        entry = plan.to_dict()
        entry["params"] = spec.total_params
        entry[f"fits_{gpu_gb}gb"] = plan.fits_device()
        entry["refusal"] = refusal(plan, spec, modifier, **run)
        results[recipe] = entry
    return results


def build_database(directory: Path) -> None:
    from darwin_modifier.data import fetch_default_model
    from darwin_modifier.modifier.entry import build_database

    keys = ("gqa_mode", "num_levels", "mlp_multiple")
    settings = {k: MEASURED_SEARCH[k] for k in keys}
    build_database(
        fetch_default_model(),
        directory,
        num_samples=2,
        seq_len=64,
        target_level=2,
        **settings,
    )


def measure_search(database_dir: Path, search_dir: Path) -> dict:
    """Run in a fresh process: RSS is measured from the baseline after imports."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin_modifier.data import fetch_default_model
    from darwin_modifier.memory import GiB, ModelSpec, plan_run
    from darwin_modifier.memory.measure import PeakRSS
    from darwin_modifier.pipeline import DarwinLMConfig, load_database, search

    torch.set_num_threads(1)
    meter = PeakRSS()
    gc.collect()
    baseline = meter.now()
    path = fetch_default_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = DarwinLMConfig(
        **MEASURED_SEARCH, database_dir=str(database_dir), search_dir=str(search_dir)
    )
    store = load_database(database_dir, model.config)
    gc.collect()
    loaded = meter.now() - baseline
    with meter.watch():
        search(model, store, config, tokenizer=tokenizer)
    measured = meter.peak - baseline
    plan = plan_run(ModelSpec.from_model(model), config, device="cpu")
    searching = [p for p in plan.phases if p.name.startswith("search")]
    planned = max(p.device_bytes + p.host_bytes for p in searching)
    return {
        "model": "SmolLM2-135M-Instruct (fp32)",
        "settings": MEASURED_SEARCH,
        "loaded_gib": round(loaded / GiB, 3),
        "measured_peak_gib": round(measured / GiB, 3),
        "planned_peak_gib": round(planned / GiB, 3),
        "measured_over_planned": round(measured / planned, 3),
        "planned_phases": {p.name: p.to_dict() for p in searching},
    }


def measure_in_subprocesses() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "database"
        here = [sys.executable, __file__]
        subprocess.run([*here, "--build-database", str(database)], check=True)
        out = Path(tmp) / "measured.json"
        subprocess.run(
            [*here, "--measure-search", str(database), "--json", str(out)], check=True
        )
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="where to write the results (required)")
    parser.add_argument("--no-measure", action="store_true")
    parser.add_argument(
        "--only-measure", action="store_true", help="only part 2 (the test uses it)"
    )
    parser.add_argument("--build-database", help=argparse.SUPPRESS)
    parser.add_argument("--measure-search", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.json and not args.build_database:
        parser.error("--json PATH is required")
    if args.build_database:
        build_database(Path(args.build_database))
        return
    if args.measure_search:
        with tempfile.TemporaryDirectory() as search_dir:
            result = measure_search(Path(args.measure_search), Path(search_dir))
        Path(args.json).write_text(json.dumps(result, indent=1))
        return

    result = {} if args.only_measure else {"recipes": plan_recipes()}
    if not args.no_measure:
        result["smollm2_search"] = measure_in_subprocesses()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))

    print(f"{'recipe':<22} {'phase':<24} {'GPU GiB':>8} {'host GiB':>9}")
    for recipe, entry in result.get("recipes", {}).items():
        for phase, numbers in entry["phases"].items():
            print(
                f"{recipe:<22} {phase:<24} {numbers['device_gib']:>8.1f} "
                f"{numbers['host_gib']:>9.1f}"
            )
        fits = {k: v for k, v in entry.items() if k.startswith("fits_")}
        print(f"{recipe:<22} peak {entry['device_peak_gib']:.1f} GiB, {fits}")
    if "smollm2_search" in result:
        m = result["smollm2_search"]
        print(
            f"SmolLM2 search on CPU: measured {m['measured_peak_gib']:.2f} GiB, "
            f"planned {m['planned_peak_gib']:.2f} GiB "
            f"(ratio {m['measured_over_planned']:.2f})"
        )


if __name__ == "__main__":
    main()
