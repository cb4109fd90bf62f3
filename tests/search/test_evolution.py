"""The search loop: selection counts, candidate swapping, determinism and resume."""

from __future__ import annotations

import json

import pytest
import torch

from darwin_modifier.database.assemble import assemble
from darwin_modifier.database.config import DatabaseConfig
from darwin_modifier.database.prune import prune_layer
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.format.shrink import shrink
from darwin_modifier.plan import DenseShape
from darwin_modifier.search.budget import Budget, initial_genome
from darwin_modifier.search.candidates import Workbench
from darwin_modifier.search.config import SearchConfig, Stage
from darwin_modifier.search.evolution import run_search
from darwin_modifier.search.fitness import Pools, TrainedKL, untrained_kl
from darwin_modifier.search.genome import Genome
from darwin_modifier.search.selection import successive_halving
from tests.conftest import tiny_model

STAGES = (Stage(2, 16, 32), Stage(1, 32, 64))


def random_store(model, root, gqa_mode="query", seed=0) -> DatabaseStore:
    """A complete database from random input statistics (no calibration run needed)."""
    shape = DenseShape.from_config(model.config)
    ladders = DatabaseConfig(num_levels=5, mlp_multiple=8, gqa_mode=gqa_mode).ladders(
        shape
    )
    identity = {"shape": shape.__dict__, "gqa_mode": gqa_mode, "calibration": seed}
    store = DatabaseStore.open_or_create(root, identity, ladders)
    gen = torch.Generator().manual_seed(seed)
    for i, layer in enumerate(model.model.layers):
        o_x = torch.randn(256, 128, generator=gen)
        d_x = torch.randn(256, 96, generator=gen)
        levels, stats = prune_layer(
            layer.self_attn.o_proj.weight.data,
            2 * o_x.T @ o_x / 256,
            layer.mlp.down_proj.weight.data,
            2 * d_x.T @ d_x / 256,
            shape,
            ladders,
            gqa_mode,
        )
        store.write_layer(i, levels, stats)
    return store


@pytest.fixture
def setup(tmp_path):
    model = tiny_model("llama")
    store = random_store(model, tmp_path / "db")
    budget = Budget.from_store(store)
    parent = initial_genome(budget, level=2)
    windows = torch.randint(
        0, 128, (16, 16), generator=torch.Generator().manual_seed(3)
    )
    pools = Pools.build(model, windows[8:], windows[:8], topk=None, batch_size=4)
    return model, store, budget, parent, pools


def search(
    setup, state_dir, generations: int, seed=0, store=None, slack=0, fitness=None
):
    model, default_store, budget, parent, pools = setup
    store = store or default_store
    settings = SearchConfig(
        generations=generations,
        offspring=4,
        selection_stages=STAGES,
        seed=seed,
        learning_rate=1e-3,
    )
    bench = Workbench(model, store, parent)
    max_params = budget.params(parent) + slack
    if fitness is not None:
        fitness = fitness(bench, pools, settings)
    return run_search(
        bench, budget, parent, max_params, pools, settings, state_dir, fitness
    )


def test_successive_halving_keeps_the_right_number():
    children = [Genome((i,), (0,)) for i in range(1, 9)]
    parent = Genome((0,), (0,))
    seen: list[tuple[int, int]] = []

    def evaluate(genome, stage):
        seen.append((stage, genome.attn[0]))
        return float(genome.attn[0])  # lower index is fitter

    stages = (Stage(4, 0, 1), Stage(2, 0, 1), Stage(1, 0, 1))
    best, scored = successive_halving(children, parent, stages, evaluate)
    assert [len(s) for s in scored] == [8, 4, 3]  # the parent joins the last stage
    assert best == parent
    assert {a for stage, a in seen if stage == 1} == {1, 2, 3, 4}


def test_successive_halving_refuses_bad_schedules():
    parent = Genome((0,), (0,))
    with pytest.raises(ValueError, match="last stage must keep exactly 1"):
        successive_halving([parent], parent, (Stage(2, 0, 1),), lambda g, s: 0.0)
    with pytest.raises(ValueError, match="keeps 8 of only 4"):
        successive_halving([parent] * 4, parent, (Stage(8, 0, 1), Stage(1, 0, 1)), None)


def test_workbench_swaps_blocks_and_restores_untrained_weights(setup):
    model, store, budget, parent, pools = setup
    bench = Workbench(model, store, parent)
    other = Genome(
        tuple(min(a + 1, 4) for a in parent.attn),
        tuple(max(m - 1, 0) for m in parent.mlp),
    )
    ids = pools.fitness[:2]
    fresh = shrink(model, *assemble(store, other.attn, other.mlp))
    swapped = bench.load(other)
    with torch.no_grad():
        torch.testing.assert_close(swapped(ids).logits, fresh(ids).logits)
    for p in swapped.parameters():  # "training"
        p.data.add_(0.1)
    back = bench.load(other)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, fresh(ids).logits)


def test_same_seed_same_result_and_budget_holds(setup, tmp_path):
    first = search(setup, tmp_path / "a", generations=3)
    second = search(setup, tmp_path / "b", generations=3)
    assert first.history == second.history
    _, _, budget, parent, _ = setup
    assert budget.params(first.best) <= budget.params(parent)
    assert len(first.history) == 3
    log = (tmp_path / "a" / "search_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in log] == [0, 1, 2]


def test_resume_equals_uninterrupted(setup, tmp_path):
    uninterrupted = search(setup, tmp_path / "full", generations=3)
    search(setup, tmp_path / "killed", generations=1)  # "killed" after one generation
    resumed = search(setup, tmp_path / "killed", generations=3)
    assert resumed.best == uninterrupted.best
    assert resumed.history == uninterrupted.history


def test_resume_with_other_settings_is_refused(setup, tmp_path):
    search(setup, tmp_path / "s", generations=1)
    with pytest.raises(ValueError, match="different settings"):
        search(setup, tmp_path / "s", generations=2, seed=7)


def test_resume_on_another_database_or_target_is_refused(setup, tmp_path):
    """A search directory is bound to its database and its size target: resuming it
    after the database was rebuilt from other data, or with another target, would
    silently continue the old parent."""
    model = setup[0]
    search(setup, tmp_path / "s", generations=1)
    rebuilt = random_store(model, tmp_path / "db2", seed=1)  # other calibration data
    with pytest.raises(ValueError, match="database: stored '[0-9a-f]+', now"):
        search(setup, tmp_path / "s", generations=2, store=rebuilt)
    with pytest.raises(ValueError, match="max_params: stored [0-9]+, now [0-9]+"):
        search(setup, tmp_path / "s", generations=2, slack=1000)
    with pytest.raises(ValueError, match="fitness: stored .*trained_kl.*untrained_kl"):
        search(setup, tmp_path / "s", generations=2, fitness=untrained_kl)
    resumed = search(setup, tmp_path / "s", generations=2)  # the same inputs resume
    assert len(resumed.history) == 2


def test_the_ablation_never_trains(setup, tmp_path, monkeypatch):
    import darwin_modifier.search.fitness as fitness_module

    def no_training(*args, **kwargs):
        raise AssertionError("the EvoPress-style ablation must not train")

    trained = search(setup, tmp_path / "trained", generations=2)
    monkeypatch.setattr(fitness_module, "train", no_training)
    ablation = search(setup, tmp_path / "ablation", generations=2, fitness=untrained_kl)
    assert len(ablation.history) == 2
    assert ablation.history != trained.history  # training changed the fitness


def test_light_training_moves_bf16_weights(tmp_path):
    """A bf16 hub model at the paper's lr 1e-5: one selection stage of light training
    must move the candidate's block weights (bf16 weights would round most steps
    away; the working model is fp32)."""
    model = tiny_model("llama")
    for p in model.parameters():
        if p.dim() > 1:
            p.data.normal_(0, 0.02)  # the scale of real LLM weights
    store = random_store(model, tmp_path / "db")
    dense = tiny_model("llama")
    dense.load_state_dict(model.state_dict())
    dense.to(torch.bfloat16)
    parent = initial_genome(Budget.from_store(store), level=2)
    windows = torch.randint(
        0, 128, (16, 16), generator=torch.Generator().manual_seed(3)
    )
    pools = Pools.build(dense, windows[8:], windows[:8], topk=None, batch_size=4)
    config = SearchConfig(
        generations=1,
        offspring=2,
        selection_stages=(Stage(1, 64, 32),),  # 4 steps of 16 tokens
        learning_rate=1e-5,
    )
    bench = Workbench(dense, store, parent)
    untrained = {
        k: v.clone()
        for k, v in bench.load(parent).state_dict().items()
        if k.startswith("model.layers.")
    }
    TrainedKL(bench, pools, config)(parent, 0, 0)
    trained = bench.model.state_dict()
    changed = sum(int((trained[k] != v).sum()) for k, v in untrained.items())
    total = sum(v.numel() for v in untrained.values())
    assert changed / total >= 0.9, f"{changed / total:.1%} of block weights moved"
    assert (
        bench.load(parent)
        .state_dict()["model.layers.0.mlp.up_proj.weight"]
        .equal(untrained["model.layers.0.mlp.up_proj.weight"])
    )  # restored exactly


def test_frozen_embeddings_stay_in_the_dense_dtype_off_the_untrained_copy(tmp_path):
    """train_embeddings=False: the embeddings keep the bf16 of the dense model (no
    fp32 copy, no untrained copy); the blocks train in fp32 and are restored."""
    dense = tiny_model("llama", tie_word_embeddings=False).to(torch.bfloat16)
    store = random_store(dense, tmp_path / "db")
    parent = initial_genome(Budget.from_store(store), level=2)
    bench = Workbench(dense, store, parent, train_embeddings=False)
    model = bench.load(parent)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert not any(
        k.endswith(("embed_tokens.weight", "lm_head.weight")) for k in bench._pristine
    )
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    model.model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    assert bench.load(parent).model.layers[0].mlp.up_proj.weight.equal(before)


def test_light_training_sees_exactly_the_stage_tokens(setup, monkeypatch):
    """16-token windows: a stage of 40 training tokens trains on 16 + 16 + 8."""
    import darwin_modifier.search.fitness as fitness_module

    model, store, budget, parent, pools = setup
    seen = []
    monkeypatch.setattr(
        fitness_module, "train", lambda m, batches, optim: seen.append(batches)
    )
    config = SearchConfig(
        generations=1, offspring=2, selection_stages=(Stage(1, 40, 16),)
    )
    TrainedKL(Workbench(model, store, parent), pools, config)(parent, 0, 0)
    (batches,) = seen
    assert [b.shape[1] for b in batches] == [16, 16, 8]
    one_left = fitness_module._exactly(pools.train[:3], 33)  # 1 token: nothing to learn
    assert [b.shape[1] for b in one_left] == [16, 16]


def test_the_probe_scores_each_parent_on_the_same_fixed_windows(setup, tmp_path):
    from darwin_modifier.search.fitness import ProbeKL

    model, store, budget, parent, pools = setup
    probe_windows = torch.randint(
        0, 128, (4, 16), generator=torch.Generator().manual_seed(11)
    )
    probe_pool = Pools.build(model, probe_windows[:0], probe_windows, None, 4)
    settings = SearchConfig(
        generations=4, offspring=4, selection_stages=STAGES, learning_rate=1e-3
    )
    bench = Workbench(model, store, parent)
    probe = ProbeKL(bench, probe_pool, settings)
    result = run_search(
        bench,
        budget,
        parent,
        budget.params(parent),
        pools,
        settings,
        tmp_path / "s",
        probe=probe,
    )
    fresh = ProbeKL(Workbench(model, store, parent), probe_pool, settings)
    for record in result.history:  # the parent's KL on the probe, as a fresh scorer
        genome = Genome.from_dict(record["parent"])
        assert record["probe_kl"] == pytest.approx(fresh(genome), rel=1e-6)
    best = [r["probe_best"] for r in result.history]
    assert best == sorted(best, reverse=True)  # never rises
    assert best[-1] == min(r["probe_kl"] for r in result.history)
    assert fresh(parent) > 0
