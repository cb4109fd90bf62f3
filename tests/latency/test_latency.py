"""The latency table (built, cached, refused on another identity) and the search on a
time budget, with a fake serve environment whose "engine" times are additive over
blocks, so the fit must recover them exactly."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from darwin_modifier.latency.build import latency_table, sweep_of
from darwin_modifier.latency.sweep import Sweep, predict
from darwin_modifier.latency.table import LatencyTable
from darwin_modifier.pipeline import DarwinLMConfig
from darwin_modifier.pipeline.search import _budget, search
from darwin_modifier.search.budget import Budget
from darwin_modifier.search.candidates import Workbench
from darwin_modifier.search.config import SearchConfig
from darwin_modifier.search.evolution import run_search
from darwin_modifier.search.fitness import Pools, untrained_kl
from darwin_modifier.search.genome import MODULES, Genome
from tests.conftest import tiny_model
from tests.search.test_evolution import STAGES, random_store

# The fake engine: a step costs FIXED plus, per present block, an overhead and a
# term linear in its size; prefill is 40x a step.
FAKE_ENGINE = """#!{python}
import json, sys
from pathlib import Path
if sys.argv[1:] == ["-m", "darwin_modifier.latency.measure", "--identity"]:
    print("engine log line")
    print(json.dumps({{"engine": "fake 1.0", "device": "{device}"}}))
    sys.exit(0)
spec, out = json.loads(Path(sys.argv[3]).read_text()), Path(sys.argv[4])
with open("{calls}", "a") as f:
    f.write(str(len(spec["models"])) + "\\n")
def step(c):
    n = c["num_hidden_layers"]
    q = c.get("layer_num_attention_heads") or [c["num_attention_heads"]] * n
    kv = c.get("layer_num_key_value_heads") or [c["num_key_value_heads"]] * n
    w = c.get("layer_intermediate_size") or [c["intermediate_size"]] * n
    t = 1e-4
    for qi, ki, wi in zip(q, kv, w):
        t += (2e-5 + 1e-6 * qi + 3e-6 * ki) * (qi > 0) + (1e-5 + 1e-7 * wi) * (wi > 0)
    return t
times = {{
    m["name"]: {{"decode_s": step(m["config"]), "prefill_s": 40 * step(m["config"])}}
    for m in spec["models"]
}}
out.write_text(json.dumps({{"identity": {{}}, "times": times}}))
"""


def fake_serve_python(root: Path, device: str = "fake cpu x2") -> tuple[Path, Path]:
    python, calls = root / f"python-{device.replace(' ', '_')}", root / "calls.txt"
    python.write_text(
        FAKE_ENGINE.format(python=sys.executable, device=device, calls=calls)
    )
    python.chmod(0o755)
    return python, calls


def measured_batches(calls: Path) -> list[int]:
    return [int(x) for x in calls.read_text().split()] if calls.exists() else []


@pytest.fixture(autouse=True)
def no_serve_environment(monkeypatch):
    """Only the fake engines given by ``serve_python`` time anything here."""
    monkeypatch.delenv("DARWIN_SERVE_PYTHON", raising=False)
    monkeypatch.setattr("darwin_modifier.latency.build.find_spec", lambda name: None)


@pytest.fixture
def model_and_store(tmp_path):
    model = tiny_model("llama")
    return model, random_store(model, tmp_path / "db", gqa_mode="kv_group")


def config(**fields) -> DarwinLMConfig:
    return DarwinLMConfig(generations=0, **fields)


def test_the_fit_recovers_block_overheads_and_slopes_despite_noise():
    n = 6
    params = {  # per layer and level; equal in every layer
        "attn": [[4_000_000, 3_000_000, 1_000_000, 0]] * n,
        "mlp": [[8_000_000, 6_000_000, 4_000_000, 2_000_000, 0]] * n,
    }
    true = {"attn_overhead": 2.0, "attn_slope": 0.5, "mlp_overhead": 1.0}
    true |= {"mlp_slope": 3.0, "fixed": 7.0}

    def cost(module, p):
        return (
            true[f"{module}_overhead"] + true[f"{module}_slope"] * p / 1e6 if p else 0
        )

    rows = {m: [[cost(m, p) for p in row] for row in params[m]] for m in MODULES}
    sweep = Sweep.design(n, {"attn": 4, "mlp": 5})
    exact = {"fixed_s": 7.0, **rows}
    seconds = {name: predict(exact, g) for name, g in sweep.genomes.items()}
    seconds["reference"] = 180.0  # the dense model as served now, vLLM's own class
    fitted = sweep.costs(seconds, params)
    assert fitted["coefficients"]["fixed"] == pytest.approx(7.0)
    for key, value in true.items():
        assert fitted["coefficients"][key] == pytest.approx(value)
    assert fitted["shrunk_dense_s"] == seconds["dense"]
    assert fitted["dense_s"] == 180.0  # speedups are against the reference
    assert predict(fitted, sweep.genomes["check"]) == pytest.approx(seconds["check"])
    # 3% noise on every time: the pooled fit still predicts the check within 5%
    rng = random.Random(0)
    noisy = {k: v * (1 + rng.uniform(-0.03, 0.03)) for k, v in seconds.items()}
    refit = sweep.costs(noisy, params)
    assert predict(refit, sweep.genomes["check"]) == pytest.approx(
        seconds["check"], rel=0.05
    )
    # a block is never fitted cheaper than nothing, nor a smaller one dearer
    upside_down = dict(seconds, mlp1=seconds["dense"] + 50)
    costs = sweep.costs(upside_down, params)
    assert all(c >= 0 for c in costs["coefficients"].values())
    for row in costs["mlp"]:
        assert all(b <= a for a, b in zip(row, row[1:])) and row[-1] == 0
    with pytest.raises(ValueError, match="at least 2 layers"):
        Sweep.design(1, {"attn": 4, "mlp": 5})


def test_the_table_is_built_cached_and_refused_for_another_setup(
    model_and_store, tmp_path
):
    model, store = model_and_store
    python, calls = fake_serve_python(tmp_path)
    table = latency_table(store, model.config, config(serve_python=str(python)))
    distinct = measured_batches(calls)
    assert len(distinct) == 1 and distinct[0] < len(sweep_of(store).genomes)
    for mode in ("decode", "prefill"):  # exact: the fake engine is additive
        assert abs(table.check[mode]["error"]) < 1e-9
    assert table.identity["engine"] == "fake 1.0"
    assert table.costs["decode"]["fixed_s"] == pytest.approx(1e-4)
    [cached] = (store.root / "latency").glob("*.json")

    again = latency_table(store, model.config, config(serve_python=str(python)))
    assert measured_batches(calls) == distinct  # from the cache: nothing timed
    assert again.costs == table.costs
    # without a serve environment the one cached table for these settings is used
    assert latency_table(store, model.config, config()).costs == table.costs
    # another batch is another table; another device too
    latency_table(
        store, model.config, config(serve_python=str(python), latency_batch=4)
    )
    other, _ = fake_serve_python(tmp_path, device="other gpu")
    latency_table(store, model.config, config(serve_python=str(other)))
    assert len(measured_batches(calls)) == 3
    with pytest.raises(ValueError, match="several cached latency tables"):
        latency_table(store, model.config, config())
    # a table given by path must be for this setup: the difference is named
    with pytest.raises(ValueError, match="batch: stored 16, now 8"):
        latency_table(
            store, model.config, config(latency_table=str(cached), latency_batch=8)
        )
    cached.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt.*delete it"):
        LatencyTable.load(cached)


def test_no_table_and_no_serve_environment_is_a_clear_error(model_and_store):
    model, store = model_and_store
    with pytest.raises(ValueError, match="set serve_python .* to measure it"):
        search(model, store, config(target_speedup=1.3))


def test_the_search_holds_a_time_budget(model_and_store, tmp_path):
    model, store = model_and_store
    python, _ = fake_serve_python(tmp_path)
    settings = config(
        target_speedup=1.3,
        serve_python=str(python),
        search_dir=str(tmp_path / "search"),
    )
    budget, parent, limit = _budget(model, store, settings)
    table = latency_table(store, model.config, settings)
    assert budget.unit == "ns" and budget.cost(parent) <= limit
    assert table.speedup(parent, "decode") >= 1.3

    windows = torch.randint(
        0, 128, (16, 16), generator=torch.Generator().manual_seed(0)
    )
    pools = Pools.build(model, windows[8:], windows[:8], topk=None, batch_size=4)
    bench = Workbench(model, store, parent)
    searched = SearchConfig(
        generations=3, offspring=4, selection_stages=STAGES, learning_rate=1e-3
    )
    fitness = untrained_kl(bench, pools, searched)
    result = run_search(
        bench, budget, parent, limit, pools, searched, tmp_path / "s", fitness
    )
    for record in result.history:
        genome = Genome.from_dict(record["parent"])
        assert record["cost_ns"] == budget.cost(genome) <= limit
        assert table.speedup(genome, "decode") >= 1.3


def test_a_speed_target_without_a_way_to_its_table_is_refused_up_front(tmp_path):
    from darwin_modifier.latency.build import check_speed_target

    database = tmp_path / "db"
    with pytest.raises(ValueError, match="set serve_python"):
        check_speed_target(config(target_speedup=1.3), database)
    with pytest.raises(ValueError, match="latency_table .* does not exist"):
        check_speed_target(
            config(target_speedup=1.3, latency_table="no.json"), database
        )
    check_speed_target(config(target_fraction=0.5), database)  # no speed target
    (database / "latency").mkdir(parents=True)
    (database / "latency" / "abc.json").write_text("{}")
    check_speed_target(config(target_speedup=1.3), database)  # an earlier run's


def test_a_dense_model_that_is_already_fast_enough_is_the_answer(
    model_and_store, tmp_path
):
    model, store = model_and_store
    python, _ = fake_serve_python(tmp_path)
    table = latency_table(store, model.config, config(serve_python=str(python)))
    costs = table.costs["decode"]
    costs["dense_s"] = 1.2 * costs["shrunk_dense_s"]  # the reference is slower
    table.save(tmp_path / "slow_reference.json")
    settings = config(
        target_speedup=1.1, latency_table=str(tmp_path / "slow_reference.json")
    )
    budget, parent, limit = _budget(model, store, settings)
    assert parent == Genome((0,) * 4, (0,) * 4) and limit == budget.dense_cost()
    costs["fixed_s"] = -1e-6  # a fit that a busy machine spoiled
    table.save(tmp_path / "spoiled.json")
    with pytest.raises(ValueError, match="inconsistent .* measure again"):
        _budget(
            model,
            store,
            config(target_speedup=1.1, latency_table=str(tmp_path / "spoiled.json")),
        )


def test_a_serve_python_that_cannot_run_is_named(model_and_store, tmp_path):
    model, store = model_and_store
    with pytest.raises(ValueError, match="serve_python .*nowhere.* cannot be run"):
        latency_table(store, model.config, config(serve_python="/nowhere/python"))
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'No module named vllm' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(ValueError, match="cannot run vLLM.*No module named vllm"):
        latency_table(store, model.config, config(serve_python=str(broken)))


def test_an_unreachable_speedup_names_the_ceiling(model_and_store, tmp_path):
    model, store = model_and_store
    python, _ = fake_serve_python(tmp_path)
    with pytest.raises(ValueError, match=r"out of reach in decode.*at most [0-9.]+x"):
        search(model, store, config(target_speedup=50, serve_python=str(python)))


def test_a_cost_budget_keeps_blocks_by_parameters_and_refuses_bad_costs():
    rng = random.Random(0)
    n, levels = 4, 5
    params = {
        "attn": [[400, 400, 200, 100, 0] for _ in range(n)],
        "mlp": [[900, 700, 500, 300, 0] for _ in range(n)],
    }
    cost = {}  # per layer a random time per parameter: equal params, equal time
    for m in MODULES:
        factors = [rng.randint(50, 60) for _ in params[m]]
        cost[m] = [[f * p // 100 for p in row] for f, row in zip(factors, params[m])]
    budget = Budget(params, cost, unit="ns")
    genome = Genome((1, 2, 3, 4), (0, 1, 2, 3))
    assert budget.canonical(genome).attn == (0, 2, 3, 4)  # same block as by params
    assert budget.cost(genome) == sum(
        cost[m][i][lv] for m in MODULES for i, lv in enumerate(genome.levels(m))
    )
    assert levels == budget.num_levels("attn", 0)
    bad = {m: [list(r) for r in cost[m]] for m in MODULES}
    bad["mlp"][1][2] = bad["mlp"][1][1] + 1
    with pytest.raises(ValueError, match="must not grow"):
        Budget(params, bad)
    bad = {m: [list(r) for r in cost[m]] for m in MODULES}
    bad["attn"][0][1] -= 1
    with pytest.raises(ValueError, match="equal parameters .* cost the same"):
        Budget(params, bad)


def test_the_table_file_round_trips(model_and_store, tmp_path):
    model, store = model_and_store
    python, _ = fake_serve_python(tmp_path)
    table = latency_table(store, model.config, config(serve_python=str(python)))
    table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(tmp_path / "t.json", table.identity)
    assert loaded == table
    assert json.loads((tmp_path / "t.json").read_text())["format"] == 1
