"""The figures people would rather look at than read (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_search_curve(path: Path, history: list[dict]) -> None:
    """The parent's KL on the fixed held-out probe per generation (and the best so
    far), with the selection fitness beside it; without a probe, the selection
    fitness and the first stage's offspring median, titled as what they are."""
    if not history:
        return
    plt = _pyplot()
    gens = [r["generation"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    probed = all("probe_kl" in r for r in history)
    if probed:
        ax.plot(gens, [r["probe_kl"] for r in history], "o-", label="parent (probe)")
        ax.plot(
            gens, [r["probe_best"] for r in history], "k--", label="best so far (probe)"
        )
        title = "DarwinLM search: parent on a fixed held-out probe"
    else:
        ax.plot(
            gens,
            [r["stage1_median"] for r in history],
            label="offspring median (stage 1)",
        )
        title = "DarwinLM search: selection fitness (fresh tokens each generation)"
    ax.plot(
        gens,
        [r["fitness"] for r in history],
        alpha=0.5 if probed else 1.0,
        label="selection fitness (parent, trained, fresh tokens)",
    )
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense ‖ pruned)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_profile(path: Path, uniform: list, best: list) -> None:
    """Per-layer query heads and MLP widths, DarwinLM against uniform."""
    plt = _pyplot()
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
    plt = _pyplot()
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
