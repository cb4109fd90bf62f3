"""The database directory: what is written is what is read, and nothing is mixed.

Everything here is synthetic (random weights and Hessians through ``prune_layer``), so
no model or calibration run is needed.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig

from darwin_modifier.database.config import DatabaseConfig
from darwin_modifier.database.prune import prune_layer
from darwin_modifier.database.store import DatabaseStore, LevelEntry
from darwin_modifier.plan import DenseShape
from tests.conftest import TINY

# 4 layers, 8 query heads in 2 KV groups, head_dim 16, 96 MLP channels
CONFIG = LlamaConfig(**TINY)
SHAPE = DenseShape.from_config(CONFIG)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: extra threads only add synchronisation (badly on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def identity(**changes) -> dict:
    base = {
        "model_weights": "0123456789abcdef",
        "shape": SHAPE.__dict__,
        "calibration": "0123456789abcdef-8x32",
        "gqa_mode": "query",
        "damp": 0.01,
        "dtype": "torch.float32",
        "storage_dtype": "float32",  # exact round trips (the default is float16)
    }
    return {**base, **changes}


def ladders(gqa_mode: str = "query") -> dict[str, list[int]]:
    # query mode on 8 heads with 11 levels repeats counts (8, 7, 6, 6, 5, 4, ...)
    return DatabaseConfig(mlp_multiple=8, gqa_mode=gqa_mode).ladders(SHAPE)


def random_layer(index: int, gqa_mode: str = "query"):
    """``prune_layer`` on a random o_proj/down_proj with random input Hessians."""
    gen = torch.Generator().manual_seed(index)
    attn_in = SHAPE.num_heads * SHAPE.head_dim
    o_w = torch.randn(SHAPE.hidden_size, attn_in, generator=gen)
    d_w = torch.randn(SHAPE.hidden_size, SHAPE.intermediate_size, generator=gen)
    xo = torch.randn(256, attn_in, generator=gen)
    xd = torch.randn(256, SHAPE.intermediate_size, generator=gen)
    xd[:, 3] = 0.0  # a dead channel: the store must cope with its zero column
    return prune_layer(
        o_w,
        2 / 256 * xo.T @ xo,
        d_w,
        2 / 256 * xd.T @ xd,
        SHAPE,
        ladders(gqa_mode),
        gqa_mode,
    )


def new_store(root, gqa_mode: str = "query") -> DatabaseStore:
    return DatabaseStore.open_or_create(
        root, identity(gqa_mode=gqa_mode), ladders(gqa_mode)
    )


def fill(store: DatabaseStore, layers, gqa_mode: str = "query") -> dict:
    written = {}
    for i in layers:
        written[i] = random_layer(i, gqa_mode)
        store.write_layer(i, *written[i])
    return written


@pytest.mark.parametrize("gqa_mode", ["query", "kv_group"])
def test_round_trip_every_level(tmp_path, gqa_mode):
    store = new_store(tmp_path / "db", gqa_mode)
    written = fill(store, range(SHAPE.num_layers), gqa_mode)
    assert store.is_complete()
    store.require_complete()

    reopened = DatabaseStore.open(tmp_path / "db", config=CONFIG)
    for i, (levels, stats) in written.items():
        for module in ("attn", "mlp"):
            ladder = reopened.ladders[module]
            dense_units = (
                SHAPE.num_heads if module == "attn" else SHAPE.intermediate_size
            )
            for level, (count, kept, weight) in enumerate(levels[module]):
                assert count == ladder[level]
                got = reopened.entry(i, module, level)
                assert isinstance(got, LevelEntry)
                if count == ladder[0]:  # dense: all units, "use the model's weight"
                    assert got.kept == list(range(dense_units))
                    assert got.weight is None
                elif count == 0:  # removed: nothing kept, no weight
                    assert got.kept == []
                    assert got.weight is None
                else:
                    assert got.kept == list(kept)
                    assert got.weight.dtype == weight.dtype
                    assert torch.equal(got.weight, weight)
                    cols = len(kept) * (SHAPE.head_dim if module == "attn" else 1)
                    assert got.weight.shape == (SHAPE.hidden_size, cols)
                assert (
                    reopened.params(i, module, level) == stats[module][level]["params"]
                )
            assert reopened.layer_stats(i)[module] == stats[module]


def test_kv_group_entries_are_whole_groups(tmp_path):
    store = new_store(tmp_path / "db", "kv_group")
    fill(store, [0], "kv_group")
    g = SHAPE.group_size
    for level in range(len(store.ladders["attn"])):
        kept = store.entry(0, "attn", level).kept
        assert len(kept) == store.ladders["attn"][level] * g
        for j in range(0, len(kept), g):  # each KV group's query heads, all of them
            assert kept[j] % g == 0
            assert kept[j : j + g] == list(range(kept[j], kept[j] + g))


def test_repeated_counts_are_stored_once(tmp_path):
    store = new_store(tmp_path / "db")
    fill(store, [0])
    attn = store.ladders["attn"]
    assert len(set(attn)) < len(attn), "this ladder should repeat counts"
    with safe_open(tmp_path / "db" / "layer_000.safetensors", framework="pt") as f:
        keys = set(f.keys())
    for module, ladder in store.ladders.items():
        stored = {c for c in ladder if c not in (0, ladder[0])}
        assert {k for k in keys if k.startswith(module + ".")} == {
            f"{module}.{c}.{part}" for c in stored for part in ("kept", "weight")
        }
    # two levels with the same count read the same tensor
    level = next(i for i in range(1, len(attn)) if attn[i] == attn[i - 1] != attn[0])
    a, b = store.entry(0, "attn", level - 1), store.entry(0, "attn", level)
    assert a.kept == b.kept and torch.equal(a.weight, b.weight)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"calibration": "fedcba9876543210-8x32"}, "calibration"),
        ({"gqa_mode": "kv_group"}, "gqa_mode"),
        ({"damp": 0.1}, "damp"),
        ({"model_weights": "fedcba9876543210"}, "model_weights"),
        ({"dtype": "torch.bfloat16"}, "dtype"),
    ],
)
def test_different_identity_is_refused(tmp_path, change, named):
    store = new_store(tmp_path / "db")
    fill(store, [0])
    with pytest.raises(ValueError, match=named) as err:
        DatabaseStore.open_or_create(tmp_path / "db", identity(**change), ladders())
    assert "different inputs" in str(err.value)
    # the refused attempt left the database untouched
    assert DatabaseStore.open(tmp_path / "db").done_layers() == {0}


def test_different_ladders_are_refused(tmp_path):
    new_store(tmp_path / "db")
    other = DatabaseConfig(mlp_multiple=32, gqa_mode="query").ladders(SHAPE)
    assert other != ladders()
    with pytest.raises(ValueError, match="ladders"):
        DatabaseStore.open_or_create(tmp_path / "db", identity(), other)


def test_same_identity_resumes(tmp_path):
    store = new_store(tmp_path / "db")
    fill(store, [0, 2])
    again = new_store(tmp_path / "db")
    assert again.done_layers() == {0, 2}
    assert not again.is_complete()


def test_open_for_another_model_shape_is_refused(tmp_path):
    store = new_store(tmp_path / "db")
    fill(store, [0])
    DatabaseStore.open(tmp_path / "db", config=CONFIG)  # the right model: fine
    for change in ({"intermediate_size": 128}, {"num_hidden_layers": 6}):
        other = LlamaConfig(**{**TINY, **change})
        with pytest.raises(ValueError, match="shape"):
            DatabaseStore.open(tmp_path / "db", config=other)


def test_missing_or_corrupt_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        DatabaseStore.open(tmp_path / "nothing")
    store = new_store(tmp_path / "db")
    fill(store, [0])
    manifest = tmp_path / "db" / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(ValueError, match="corrupt"):
        DatabaseStore.open(tmp_path / "db")
    with pytest.raises(ValueError, match="corrupt"):
        DatabaseStore.open_or_create(tmp_path / "db", identity(), ladders())
    data = json.loads(text)
    data["format_version"] = 999
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format"):
        DatabaseStore.open(tmp_path / "db")


def test_require_complete_names_missing_layers(tmp_path):
    store = new_store(tmp_path / "db")
    with pytest.raises(ValueError, match=r"layers \[0, 1, 2, 3\] are missing"):
        store.require_complete()
    fill(store, [0, 2])
    with pytest.raises(ValueError, match=r"layers \[1, 3\] are missing"):
        DatabaseStore.open(tmp_path / "db").require_complete()
    with pytest.raises(ValueError, match="layer 1 is not in the database"):
        store.entry(1, "mlp", 3)
    fill(store, [1, 3])
    store.require_complete()


def test_nbytes_counts_the_layer_files(tmp_path):
    store = new_store(tmp_path / "db")
    assert store.nbytes() == 0
    fill(store, [0])
    one = store.nbytes()
    payload = 0
    with safe_open(tmp_path / "db" / "layer_000.safetensors", framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            payload += t.numel() * t.element_size()
    assert one == (tmp_path / "db" / "layer_000.safetensors").stat().st_size
    assert payload <= one <= payload + 16_384  # tensors plus a small header
    fill(store, [1])
    assert (
        store.nbytes()
        == one + (tmp_path / "db" / "layer_001.safetensors").stat().st_size
    )
    # kept columns only: well under one full-shape tensor per stored level
    full = 0
    for module, ladder in store.ladders.items():
        cols = (
            SHAPE.num_heads * SHAPE.head_dim
            if module == "attn"
            else SHAPE.intermediate_size
        )
        full += len(ladder) * SHAPE.hidden_size * cols * 4  # fp32, every level
    assert one < 0.5 * full


def test_partial_leftovers_do_not_break_resume(tmp_path):
    """A build killed mid-layer leaves files the resumed build must get past."""
    root = tmp_path / "db"
    store = new_store(root)
    written = fill(store, [0])
    # Killed after the layer-1 file was renamed into place but before the manifest
    # listed it; and killed while writing layer 2 (its temporary file is half there).
    levels, stats = random_layer(7)  # different content than the resumed build writes
    DatabaseStore(root, json.loads((root / "manifest.json").read_text())).write_layer(
        1, levels, stats
    )
    (root / "manifest.json").write_text(json.dumps(store.manifest, indent=1))
    (root / "layer_002.partial").write_bytes(b"\x00" * 100)
    (root / "manifest.partial").write_text("{ half a manifest")

    resumed = new_store(root)
    assert resumed.done_layers() == {0}
    written.update(fill(resumed, [1, 2, 3]))
    resumed.require_complete()
    final = DatabaseStore.open(root, config=CONFIG)
    for i, (levels, _) in written.items():
        for level, (count, kept, weight) in enumerate(levels["mlp"]):
            got = final.entry(i, "mlp", level)
            if 0 < level and count:
                assert got.kept == list(kept) and torch.equal(got.weight, weight)


def test_entry_survives_rewrite_of_an_open_layer(tmp_path):
    """Reading a layer, then rewriting it (resume), must not serve the stale file."""
    store = new_store(tmp_path / "db")
    store.write_layer(0, *random_layer(5))
    store.entry(0, "mlp", 4)  # opens a memory-mapped handle
    levels, stats = random_layer(0)
    store.write_layer(0, levels, stats)
    assert torch.equal(store.entry(0, "mlp", 4).weight, levels["mlp"][4][2])


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_layer_file_is_found_at_open_and_built_again(tmp_path, damage):
    store = new_store(tmp_path / "db")
    fill(store, [0, 1, 2])
    path = tmp_path / "db" / "layer_001.safetensors"
    if damage == "truncate":  # a copy cut short, a disk that filled up
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.unlink()
    reopened = new_store(tmp_path / "db")
    assert reopened.done_layers() == {0, 2}
    with pytest.raises(ValueError, match="layers \\[1, 3\\] are missing; layer_001"):
        reopened.require_complete()
    fill(reopened, [1, 3])
    again = DatabaseStore.open(tmp_path / "db")
    assert again.is_complete() and not again.damaged
