"""The latency table's timing on the real engine (serve environment): a shrunk config
timed with random weights (what the table times), a checkpoint timed as saved, and a
killed run resumed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from darwin_modifier.format.shrink import shrink, shrunk_config  # noqa: E402
from darwin_modifier.latency.measure import _key, engine_identity, measure  # noqa: E402
from darwin_modifier.plan import DenseShape, LayerPlan, Plan  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402

# head_dim 64: vLLM's CPU attention takes head sizes 32..512
SHAPE = dict(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)
SETTINGS = dict(
    batch=2, input_len=8, output_len=4, repeats=1, dtype="bfloat16", enforce_eager=True
)


def test_models_are_timed_and_a_killed_run_resumes(tmp_path):
    dense = tiny_model("llama", **SHAPE)
    plan = Plan(
        DenseShape.from_config(dense.config),
        [LayerPlan((0, 1), range(64)), LayerPlan((), range(128))],
    )
    shrunk_dir = tmp_path / "shrunk"
    shrink(dense, plan).save_pretrained(shrunk_dir)
    dense_config = json.loads(dense.config.to_json_string())
    shrunk = json.loads(shrunk_config(dense.config, plan).to_json_string())
    spec = {
        "settings": SETTINGS,
        "models": [
            {"name": "done_before", "config": dense_config},
            {"name": "shrunk_config", "config": shrunk},
            {"name": "shrunk", "path": str(shrunk_dir)},
        ],
    }
    out = tmp_path / "times.json"
    # what a killed run left: one model timed (a marker value), then a torn line
    marker = {"decode_s": 123.0, "prefill_s": 456.0}
    kept = {
        "key": _key(spec["models"][0]),
        "identity": engine_identity(),
        "settings": SETTINGS,
        "times": marker,
    }
    partial = tmp_path / "times.json.partial.jsonl"
    partial.write_text(json.dumps(kept) + "\n" + '{"name": "dense", "ident')

    result = measure(spec, out)
    times = result["times"]
    assert times["done_before"] == marker  # resumed, not timed again
    for name in ("shrunk_config", "shrunk"):
        assert 0 < times[name]["decode_s"] < 10
        assert 0 < times[name]["prefill_s"] < 60
        assert len(times[name]["decode_all_s"]) == SETTINGS["repeats"]
    assert json.loads(out.read_text()) == result
    assert not partial.exists()
    assert result["identity"]["engine"].startswith("vllm ")
