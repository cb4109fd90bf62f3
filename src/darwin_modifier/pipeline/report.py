"""What people look at after a search: ``result.json``, the search curve and the
per-layer profile (DarwinLM against uniform)."""

from __future__ import annotations

from pathlib import Path

from darwin_modifier.artifacts import write_json
from darwin_modifier.artifacts.plots import plot_profile, plot_search_curve
from darwin_modifier.database.assemble import assemble
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.search.genome import Genome

RESULT_FILE = "result.json"


def write_report(
    out_dir: Path,
    store: DatabaseStore,
    uniform: Genome,
    best: Genome,
    history: list[dict],
) -> dict:
    """``result.json``, ``search_curve.png`` and ``profile.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    uniform_plan, _ = assemble(store, uniform.attn, uniform.mlp)
    best_plan, _ = assemble(store, best.attn, best.mlp)
    result = {
        "uniform": {
            "genome": uniform.to_dict(),
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
        "history": history,
    }
    write_json(out_dir / RESULT_FILE, result)
    plot_search_curve(out_dir / "search_curve.png", history)
    plot_profile(
        out_dir / "profile.png", uniform_plan.layer_sizes(), best_plan.layer_sizes()
    )
    return result
