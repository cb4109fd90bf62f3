"""What people look at after a search: result JSON, search curve, per-layer profile."""

from __future__ import annotations

import json
from pathlib import Path

from darwin_modifier.database.assemble import assemble
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.search.genome import Genome


def write_report(
    out_dir: Path,
    store: DatabaseStore,
    parent: Genome,
    best: Genome,
    history: list[dict],
) -> dict:
    """``result.json``, ``search_curve.png`` and ``profile.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    uniform_plan, _ = assemble(store, parent.attn, parent.mlp)
    best_plan, _ = assemble(store, best.attn, best.mlp)
    result = {
        "uniform": {
            "genome": parent.to_dict(),
            "params": uniform_plan.block_params(),
            "kept_fraction": uniform_plan.kept_fraction(),
        },
        "darwinlm": {
            "genome": best.to_dict(),
            "params": best_plan.block_params(),
            "kept_fraction": best_plan.kept_fraction(),
            "layer_sizes": best_plan.layer_sizes(),
            "plan": best_plan.to_dict(),
        },
        "generations": len(history),
        "fitness": [record["fitness"] for record in history],
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    _plot_curve(out_dir / "search_curve.png", history)
    _plot_profile(
        out_dir / "profile.png", uniform_plan.layer_sizes(), best_plan.layer_sizes()
    )
    return result


def _plot_curve(path: Path, history: list[dict]) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [r["generation"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(gens, [r["fitness"] for r in history], label="parent (last stage)")
    ax.plot(
        gens, [r["stage1_median"] for r in history], label="offspring median (stage 1)"
    )
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense ‖ pruned)")
    ax.set_yscale("log")
    ax.set_title("DarwinLM search")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_profile(path: Path, uniform: list, best: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = range(len(best))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.bar(layers, [q for q, _, _ in best], color="tab:blue", label="DarwinLM")
    top.step(
        layers, [q for q, _, _ in uniform], where="mid", color="k", label="uniform"
    )
    top.set_ylabel("query heads")
    top.legend(loc="upper right")
    bottom.bar(layers, [w for _, _, w in best], color="tab:orange", label="DarwinLM")
    bottom.step(
        layers, [w for _, _, w in uniform], where="mid", color="k", label="uniform"
    )
    bottom.set_ylabel("MLP width")
    bottom.set_xlabel("decoder layer")
    fig.suptitle("Per-layer profile")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(path: Path, history: dict) -> None:
    """Post-training loss per step, and held-out perplexity where it was evaluated."""
    if not history["loss"]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, len(history["loss"]) + 1)
    ax.plot(steps, history["loss"], color="tab:blue", alpha=0.6, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    evals = [e for e in history["eval"] if "ppl" in e]
    if evals:
        right = ax.twinx()
        right.plot(
            [e["step"] for e in evals],
            [e["ppl"] for e in evals],
            "o-",
            color="tab:red",
            label="held-out perplexity",
        )
        right.set_ylabel("held-out perplexity")
        right.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("Post-compression training")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
