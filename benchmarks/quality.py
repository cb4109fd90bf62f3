"""Quality at equal size, over seeds and targets: uniform, DarwinLM, the EvoPress-style
ablation, Torch-Pruning, and a knapsack on the database's own errors.

    python benchmarks/quality.py --json results/quality.json \
        [--targets 0.5 0.35] [--seeds 0 1 2] [--posttrain-tokens 8192]

One database (built once, cached in ``--work``). For each target (fraction of the
decoder-block parameters kept) and seed, two searches from the same uniform parent and
budget: DarwinLM (training-aware selection, ``TrainedKL``) and the ablation without
light training (``untrained_kl``: EvoPress-style selection on the same windows). Next
to them, at the same total parameters:

- ``uniform``: the search's first parent (every module at one level, remainder spread
  over the depth); deterministic, so its std is 0.
- ``torch_pruning``: Torch-Pruning 1.6.1 with first-order Taylor importance on the
  seed's calibration windows, the same ratio in every layer
  (``benchmarks/torch_pruning_peer.py``).
- ``obs_knapsack``: the training-free allocation of least summed relative OBS error
  (:mod:`darwin_modifier.search.warm_start`), as ZipLM / SPDY allocate; one-shot.

With ``--posttrain-tokens``, uniform, the first seed's DarwinLM and the first seed's
Torch-Pruning model are then trained on the same tokens (cross-entropy) and measured
again. Every model is measured on the same held-out windows: perplexity and
KL(dense ‖ model). Searches resume from their state after a kill; finished
evaluations are kept in ``--work/evaluations.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch_pruning_peer import describe, prune_to_params
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.artifacts import digest, tokens_digest, write_json
from darwin_modifier.data import fetch_default_model
from darwin_modifier.data.windows import load_texts, token_windows
from darwin_modifier.demo import recipe_modifier
from darwin_modifier.evaluation.quality import count_params, evaluate, heldout_windows
from darwin_modifier.modifier.entry import build_database
from darwin_modifier.pipeline import (
    DarwinLMConfig,
    load_database,
    materialize,
    search,
)
from darwin_modifier.search.budget import Budget
from darwin_modifier.search.fitness import TrainedKL, untrained_kl
from darwin_modifier.search.warm_start import database_errors, least_error_genome
from darwin_modifier.training.config import PostTrainConfig
from darwin_modifier.training.posttrain import post_train

DEMO_RECIPE = Path(__file__).parents[1] / "recipes" / "smollm2_cpu.yaml"
PAPER_SCHEDULE = dict(search_seq_len=4096)  # the modifier's defaults are the paper's
SEARCHED = {"darwinlm": TrainedKL, "evopress": untrained_kl}
BARS = {0.5: 0.80, 0.35: 0.70}  # DarwinLM / uniform, PPL and KL, per target
POSTTRAIN_DATA = ("python-docs", 256, 7)  # source, window length, seed
ROWS = ("uniform", "darwinlm", "evopress", "torch_pruning", "obs_knapsack")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", required=True)
    parser.add_argument("--model", default=None, help="default: embedded SmolLM2")
    parser.add_argument("--work", default="results/quality")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.35])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--generations", type=int, default=None)
    parser.add_argument("--gqa-mode", default="kv_group")
    parser.add_argument("--eval-windows", type=int, default=24)
    parser.add_argument("--posttrain-tokens", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    work = Path(args.work)
    model_dir = args.model or fetch_default_model()
    schedule = _cpu_schedule() if args.scale == "cpu" else dict(PAPER_SCHEDULE)
    if args.generations is not None:
        schedule["generations"] = args.generations

    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    store = _database(model_dir, work, args.gqa_mode, dense.config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heldout = heldout_windows(tokenizer, seq_len=512, num_windows=args.eval_windows)
    cache = _Evaluations(work / "evaluations.json", heldout, store)

    report: dict = {"settings": {**schedule, **vars(args)}, "targets": {}}
    for fraction in args.targets:
        common = dict(
            target_fraction=fraction,
            gqa_mode=args.gqa_mode,
            database_dir=str(work / "database"),
            **schedule,
        )
        report["targets"][str(fraction)] = _one_target(
            args, dense, tokenizer, store, common, cache
        )
    report["wall_s"] = time.time() - start
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    _print(report)


def _one_target(args, dense, tokenizer, store, common: dict, cache) -> dict:
    """Every row of one target: models built, measured, summarised over seeds."""
    tag = f"t{common['target_fraction']}"
    work = Path(args.work) / tag
    models: dict[str, torch.nn.Module] = {}
    genomes, search_s = {}, {}
    for seed in args.seeds:
        for name, fitness in SEARCHED.items():
            config = DarwinLMConfig(
                **{
                    **common,
                    "seed": seed,
                    "search_dir": str(work / f"{name}_seed{seed}"),
                }
            )
            t0 = time.time()
            outcome = search(dense, store, config, fitness, tokenizer)
            search_s[f"{name}_seed{seed}"] = time.time() - t0
            genomes["uniform"] = outcome.uniform  # the same parent for every seed
            genomes[f"{name}_seed{seed}"] = outcome.best
    # every row at the searches' budget: the uniform parent is the densest
    # near-uniform genome within it, the others fill it as far as they can
    budget = Budget.from_store(store)
    limit = int(common["target_fraction"] * budget.dense_params())
    errors = database_errors(store)
    relative = {
        m: [[e / max(r[-1], 1e-12) for e in r] for r in rows]
        for m, rows in errors.items()
    }
    genomes["obs_knapsack"] = least_error_genome(budget, relative, limit, grid=1 << 16)
    for name, genome in genomes.items():
        models[name] = materialize(dense, store, genome)
    embeddings = count_params(dense) - budget.dense_params()
    shapes = {}
    for seed in args.seeds:
        name = f"torch_pruning_seed{seed}"
        models[name] = prune_to_params(
            copy.deepcopy(dense),
            _calibration(tokenizer, seed),
            embeddings + limit,
            importance="taylor",
        )
        shapes[name] = describe(models[name])
    fingerprints = {n: {"genome": g.to_dict()} for n, g in genomes.items()}
    fingerprints.update({n: {"shape": shape} for n, shape in shapes.items()})
    measured = cache.measure(tag, dense, models, fingerprints)

    result: dict = {
        "budget_block_params": limit,
        "search_s": search_s,  # this run's time: a resumed search counts only the rest
        "torch_pruning_shapes": shapes,
    }
    for row in ROWS:
        names = [n for n in measured if n == row or n.startswith(f"{row}_seed")]
        result[row] = _summary({n: measured[n] for n in names})
        params = [count_params(models[n]) for n in names]
        result[row]["params"] = round(statistics.mean(params))
        for name, count in zip(names, params):
            result[row]["seeds"][name]["params"] = count
    result["dense"] = measured["dense"]
    uniform = result["uniform"]
    for row in ("darwinlm", "evopress", "torch_pruning", "obs_knapsack"):
        result[f"{row}_over_uniform"] = {
            "ppl": result[row]["ppl_mean"] / uniform["ppl_mean"],
            "kl": result[row]["kl_mean"] / uniform["kl_mean"],
        }
    darwin = result["darwinlm"]["seeds"]
    result["every_seed_ahead_of_uniform"] = all(
        s["ppl"] < uniform["ppl_mean"] and s["kl"] < uniform["kl_mean"]
        for s in darwin.values()
    )
    result["darwinlm_ahead_of_evopress"] = all(
        result["darwinlm"][f"{q}_mean"] < result["evopress"][f"{q}_mean"]
        for q in ("ppl", "kl")
    )
    bar = BARS.get(common["target_fraction"])
    if bar is not None:  # the bar: DarwinLM / uniform, PPL and KL
        ratio = result["darwinlm_over_uniform"]
        result["bar"] = bar
        result["bar_met"] = (
            max(ratio.values()) <= bar
            and result["every_seed_ahead_of_uniform"]
            and result["darwinlm_ahead_of_evopress"]
        )
    if args.posttrain_tokens:
        first = args.seeds[0]
        chosen = {
            "uniform": "uniform",
            "darwinlm": f"darwinlm_seed{first}",
            "torch_pruning": f"torch_pruning_seed{first}",
        }
        result["posttrained"] = _post_trained(
            args, tag, dense, tokenizer, models, chosen, fingerprints, cache
        )
    return result


def _post_trained(
    args, tag, dense, tokenizer, models, chosen, fingerprints, cache
) -> dict:
    """The same training tokens for each model (cross-entropy, the paper's loss)."""
    source, seq_len, seed = POSTTRAIN_DATA
    windows = token_windows(
        load_texts(source, "train"),
        tokenizer,
        seq_len,
        args.posttrain_tokens // seq_len,
        seed,
    )
    settings = PostTrainConfig(
        tokens=args.posttrain_tokens, learning_rate=5e-5, warmup_steps=8
    )
    trained, prints = {}, {}
    for name in chosen.values():
        key = f"{name}_trained"
        prints[key] = {
            **fingerprints[name],
            "training": settings.training_settings(),
            "data": POSTTRAIN_DATA,
        }
        model = models[name]
        if not cache.has(tag, key, prints[key]):  # else measured already
            with tempfile.TemporaryDirectory() as tmp:
                post_train(model, windows, settings, tmp)
        trained[key] = model
    measured = cache.measure(tag, dense, trained, prints)
    rows = {
        row: {**measured[f"{name}_trained"], "model": name}
        for row, name in chosen.items()
    }
    return {"tokens": args.posttrain_tokens, **rows}


class _Evaluations:
    """Held-out PPL and KL per model, kept on disk so that a rerun skips them; an
    entry counts only for the same held-out windows and the same model (genome,
    pruned shape, training), so a changed setting is measured again."""

    def __init__(self, path: Path, heldout: torch.Tensor, store):
        self.path, self.windows = path, tokens_digest(heldout)
        self.database = store.digest()  # its inputs (dense weights included) too
        self.heldout = heldout
        self.done = json.loads(path.read_text()) if path.exists() else {}

    def _key(self, fingerprint: dict) -> str:
        return digest(
            {"windows": self.windows, "database": self.database, **fingerprint}
        )

    def has(self, tag: str, name: str, fingerprint: dict) -> bool:
        entry = self.done.get(tag, {}).get(name)
        return entry is not None and entry["key"] == self._key(fingerprint)

    def measure(self, tag: str, dense, models: dict, fingerprints: dict) -> dict:
        fingerprints = {**fingerprints, "dense": {"dense": True}}
        todo = {
            n: m for n, m in models.items() if not self.has(tag, n, fingerprints[n])
        }
        if todo or not self.has(tag, "dense", fingerprints["dense"]):
            measured = evaluate({"dense": dense, **todo}, self.heldout)
            for name, values in measured.items():
                key = self._key(fingerprints[name])
                self.done.setdefault(tag, {})[name] = {**values, "key": key}
            write_json(self.path, self.done)
        return {
            n: {k: v for k, v in self.done[tag][n].items() if k != "key"}
            for n in ["dense", *models]
        }


def _summary(per_model: dict[str, dict]) -> dict:
    ppl = [m["ppl"] for m in per_model.values()]
    kl = [m["kl"] for m in per_model.values()]

    def std(values):
        return statistics.stdev(values) if len(values) > 1 else 0.0

    return {
        "ppl_mean": statistics.mean(ppl),
        "ppl_std": std(ppl),
        "kl_mean": statistics.mean(kl),
        "kl_std": std(kl),
        "seeds": per_model,
    }


def _cpu_schedule() -> dict:
    """The demo recipe's search for 6 generations, without its probe curve: 4-6.5 min
    per DarwinLM search and 2.3-4 min per ablation on a 2-core CPU."""
    demo = recipe_modifier(DEMO_RECIPE, Path("unused"))
    return {**demo.search_settings(), "generations": 6, "probe_tokens": 0}


def _calibration(tokenizer, seed: int) -> torch.Tensor:
    """Torch-Pruning's importance windows: 16 x 256 training tokens, by seed."""
    return token_windows(load_texts("python-docs", "train"), tokenizer, 256, 16, seed)


def _print(report: dict) -> None:
    print(f"\n{'target':<7} {'model':<15} {'params':>12} {'ppl':>16} {'KL':>16}")
    for target, result in report["targets"].items():
        for row in ROWS:
            r = result[row]
            print(
                f"{target:<7} {row:<15} {r['params']:>12,} "
                f"{r['ppl_mean']:>9.2f} ± {r['ppl_std']:<5.2f}"
                f"{r['kl_mean']:>9.4f} ± {r['kl_std']:<6.4f}"
            )
        for name, r in result.get("posttrained", {}).items():
            if name != "tokens":
                print(
                    f"{target:<7} {name + ' +PT':<15} {'':>12} {r['ppl']:>9.2f}"
                    f"{'':>8}{r['kl']:>9.4f}"
                )
        ratio = result["darwinlm_over_uniform"]
        print(
            f"{target:<7} DarwinLM / uniform: ppl x{ratio['ppl']:.2f}, KL "
            f"x{ratio['kl']:.2f}; every seed ahead: "
            f"{result['every_seed_ahead_of_uniform']}; ahead of EvoPress-style: "
            f"{result['darwinlm_ahead_of_evopress']}"
        )


def _database(model_dir, work: Path, gqa_mode: str, config):
    root = work / "database"
    try:
        store = load_database(root, config)  # built by an earlier run
    except (FileNotFoundError, ValueError):  # none yet, or unfinished: build resumes
        return build_database(
            model_dir, root, gqa_mode=gqa_mode, search_dir=str(work / "db_only")
        )
    if store.manifest["gqa_mode"] != gqa_mode:
        raise ValueError(
            f"{root} holds a {store.manifest['gqa_mode']} database, not {gqa_mode}; "
            "use another --work"
        )
    return store


if __name__ == "__main__":
    main()
