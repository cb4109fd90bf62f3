"""Building a database through LLM Compressor's oneshot, on a tiny random Llama.

What a user depends on: a finished build is complete and consistent (nested levels,
loss growing with the level), it is what OBS makes of the *dense* model's input
Hessians, an interrupted build resumes to exactly what an uninterrupted one writes, and
a directory built from other data or settings is refused instead of being mixed.
"""

from __future__ import annotations

import shutil
from itertools import pairwise

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data import corpus_split
from darwin_modifier.data.calibration import calibration_dataset
from darwin_modifier.database.hessian import HessianAccumulator
from darwin_modifier.database.prune import GQA_MODES, prune_layer
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.modifier.entry import build_database

NUM_SAMPLES, SEQ_LEN = 4, 32
SETTINGS = dict(num_samples=NUM_SAMPLES, seq_len=SEQ_LEN, mlp_multiple=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: extra threads only add synchronisation (badly on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts():
    return corpus_split("calibration")[:3]


def build(model_dir, root, texts, **settings):
    return build_database(
        model_dir,
        root / "db",
        dataset=texts,
        search_dir=str(root / "search"),
        **{**SETTINGS, **settings},
    )


@pytest.fixture(scope="module")
def databases(tiny_dir, texts, tmp_path_factory):
    """``databases(gqa_mode) -> (root, store)``: one uninterrupted build per mode."""
    cache = {}

    def get(gqa_mode: str):
        if gqa_mode not in cache:
            root = tmp_path_factory.mktemp(f"db_{gqa_mode}")
            store = build(tiny_dir, root, texts, gqa_mode=gqa_mode)
            cache[gqa_mode] = root, store
        return cache[gqa_mode]

    return get


def all_tensors(root) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted((root / "db").glob("layer_*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                tensors[f"{path.stem}/{key}"] = f.get_tensor(key)
    return tensors


@pytest.mark.parametrize("gqa_mode", GQA_MODES)
def test_build_is_complete_nested_and_monotone(databases, gqa_mode, tiny_dir):
    root, store = databases(gqa_mode)
    config = AutoConfig.from_pretrained(tiny_dir)
    store = DatabaseStore.open(root / "db", config=config)
    store.require_complete()
    assert store.manifest["gqa_mode"] == gqa_mode
    shape = store.shape
    assert store.ladders["mlp"] == [96, 88, 80, 64, 56, 48, 40, 32, 16, 8, 0]
    units = shape.num_kv_heads if gqa_mode == "kv_group" else shape.num_heads
    assert store.ladders["attn"][0] == units and store.ladders["attn"][-1] == 0
    per_unit = shape.group_size if gqa_mode == "kv_group" else 1
    for i in range(shape.num_layers):
        for module, ladder in store.ladders.items():
            entries = [store.entry(i, module, lv) for lv in range(len(ladder))]
            for count, entry in zip(ladder, entries):
                size = per_unit * count if module == "attn" else count
                assert len(entry.kept) == size
                assert entry.kept == sorted(set(entry.kept))
                if entry.weight is not None:
                    width = shape.head_dim if module == "attn" else 1
                    assert entry.weight.shape == (shape.hidden_size, size * width)
                    assert torch.isfinite(entry.weight).all()
            if module == "attn" and gqa_mode == "kv_group":  # whole KV groups only
                for entry in entries:
                    groups = {h // shape.group_size for h in entry.kept}
                    assert len(entry.kept) == len(groups) * shape.group_size
            for hi, lo in pairwise(entries):  # one greedy trajectory: nested levels
                assert set(lo.kept) <= set(hi.kept)
            stats = store.layer_stats(i)[module]
            losses = [s["loss"] for s in stats]
            assert losses[0] == 0.0 and losses[-1] > 0
            for a, b in pairwise(losses):
                assert b >= a * (1 - 1e-5)
            params = [s["params"] for s in stats]
            assert params[-1] == 0
            if gqa_mode == "kv_group":  # query mode: see test_query_mode_build_finishes
                assert params == sorted(params, reverse=True)


@pytest.mark.parametrize("gqa_mode", GQA_MODES)
def test_build_is_obs_on_the_dense_hessians(databases, gqa_mode, tiny_dir, texts):
    """Each layer's entries are OBS on the inputs the *dense* model gives that layer."""
    root, store = databases(gqa_mode)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    data = calibration_dataset(tokenizer, texts, NUM_SAMPLES, SEQ_LEN)
    acc = HessianAccumulator()
    hooks = [
        m.register_forward_hook(acc.hook)
        for layer in model.model.layers
        for m in (layer.self_attn.o_proj, layer.mlp.down_proj)
    ]
    with torch.no_grad():
        for row in data:
            model(torch.tensor([row["input_ids"]]))
    for h in hooks:
        h.remove()
    for i, layer in enumerate(model.model.layers):
        o, down = layer.self_attn.o_proj, layer.mlp.down_proj
        levels, stats = prune_layer(
            o.weight.data,
            acc.pop(o)[0],
            down.weight.data,
            acc.pop(down)[0],
            store.shape,
            store.ladders,
            gqa_mode,
        )
        for module in store.ladders:
            for level, (_, kept, weight) in enumerate(levels[module]):
                entry = store.entry(i, module, level)
                assert entry.kept == list(kept), (i, module, level)
                if entry.weight is not None:
                    assert entry.weight.dtype == store.dtype == torch.float16
                    torch.testing.assert_close(
                        entry.weight.float(), weight, rtol=2e-3, atol=1e-3
                    )
            for got, want in zip(store.layer_stats(i)[module], stats[module]):
                assert got["params"] == want["params"]
                assert got["loss"] == pytest.approx(want["loss"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("gqa_mode", GQA_MODES)
def test_interrupted_build_resumes_to_the_same_database(
    databases, gqa_mode, tiny_dir, texts, tmp_path, monkeypatch
):
    """Killed after two layers, the rebuild keeps them and writes the rest, exactly."""
    ref_root, _ = databases(gqa_mode)
    original = DatabaseStore.write_layer_file
    written = []

    def dying_write_layer(self, index, levels):
        if len(written) == 2:
            raise RuntimeError("simulated kill")
        original(self, index, levels)
        written.append(index)

    monkeypatch.setattr(DatabaseStore, "write_layer_file", dying_write_layer)
    with pytest.raises(RuntimeError, match="simulated kill"):
        build(tiny_dir, tmp_path, texts, gqa_mode=gqa_mode)
    monkeypatch.setattr(DatabaseStore, "write_layer_file", original)
    partial = DatabaseStore.open(tmp_path / "db")
    assert partial.done_layers() == {0, 1} and not partial.is_complete()
    with pytest.raises(ValueError, match=r"layers \[2, 3\] are missing"):
        partial.require_complete()
    kept_files = {
        p.name: p.stat().st_mtime_ns for p in (tmp_path / "db").glob("layer_*")
    }

    resumed = build(tiny_dir, tmp_path, texts, gqa_mode=gqa_mode)
    resumed.require_complete()
    for name in ("layer_000.safetensors", "layer_001.safetensors"):  # not redone
        assert (tmp_path / "db" / name).stat().st_mtime_ns == kept_files[name]
    want, got = all_tensors(ref_root), all_tensors(tmp_path)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    ref = DatabaseStore.open(ref_root / "db")
    assert resumed.manifest == {**ref.manifest, "layers": resumed.manifest["layers"]}
    for i in range(ref.shape.num_layers):
        assert resumed.layer_stats(i) == ref.layer_stats(i)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (dict(dataset="other"), "calibration"),
        (dict(num_samples=NUM_SAMPLES - 1), "calibration"),
        (dict(gqa_mode="query"), "gqa_mode"),
        (dict(damp=0.05), "damp"),
        (dict(mlp_multiple=16), "ladders"),
    ],
)
def test_rebuild_from_other_inputs_is_refused(
    databases, tiny_dir, texts, change, named, tmp_path
):
    ref_root, _ = databases("kv_group")
    before = all_tensors(ref_root)
    settings = {"gqa_mode": "kv_group", **change}
    data = texts
    if settings.pop("dataset", None) == "other":
        data = corpus_split("calibration")[3:6]
    root = tmp_path / "copy"
    shutil.copytree(ref_root / "db", root / "db")
    with pytest.raises(ValueError, match=named):
        build(tiny_dir, root, data, **settings)
    after = all_tensors(root)  # the refused build touched nothing
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_query_mode_build_finishes(tiny_dir, texts, tmp_path):
    """The paper's GQA mode must stay available: its build has to finish."""
    store = build(tiny_dir, tmp_path, texts, gqa_mode="query")
    store.require_complete()
    assert store.manifest["gqa_mode"] == "query"
    for i in range(store.shape.num_layers):  # a level never makes the block bigger
        params = [s["params"] for s in store.layer_stats(i)["attn"]]
        assert params == sorted(params, reverse=True)


def test_single_calibration_pass_builds_the_same_database(
    databases, tiny_dir, texts, tmp_path
):
    """Our entry points turn off LLM Compressor's error propagation (a second forward
    pass per layer); DarwinLM's calibration changes no weight, so nothing changes."""
    from llmcompressor import oneshot

    from darwin_modifier.modifier import DarwinLMModifier

    root, _ = databases("kv_group")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    data = calibration_dataset(tokenizer, texts, NUM_SAMPLES, SEQ_LEN, 0, "text")
    modifier = DarwinLMModifier(
        database_dir=str(tmp_path / "db"),
        search_dir=str(tmp_path / "search"),
        generations=0,
        shrink=False,
        gqa_mode="kv_group",
        mlp_multiple=8,
    )
    oneshot(
        model=str(tiny_dir),
        tokenizer=tokenizer,
        dataset=data,
        recipe=[modifier],
        num_calibration_samples=len(data),
        max_seq_length=SEQ_LEN,
        shuffle_calibration_samples=False,
        propagate_error=True,  # LLM Compressor's default: two passes per layer
    )
    expected, got = all_tensors(root), all_tensors(tmp_path)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
