"""Plans: validation with clear errors, GQA layout, parameter counts, JSON round
trip."""

from __future__ import annotations

import pytest
from transformers import GPT2Config

from darwin_modifier.families import family_of
from darwin_modifier.plan import DenseShape, LayerPlan, Plan, attention_layout

SHAPE = DenseShape(
    num_layers=2,
    hidden_size=64,
    num_heads=8,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=96,
)


@pytest.mark.parametrize(
    "layers, message",
    [
        ([LayerPlan((8,), ())] * 2, "query head index 8 is out of range"),
        ([LayerPlan((), (96,))] * 2, "MLP channel index 96 is out of range"),
        ([LayerPlan((), (-1,))] * 2, "out of range"),
        ([LayerPlan((1, 1), ())] * 2, "repeat"),
        ([LayerPlan((), ())] * 2, "model would be empty"),
        ([LayerPlan((1,), ())], "plan has 1 layers but the model has 2"),
    ],
)
def test_bad_plans_raise_clear_errors(layers, message):
    with pytest.raises(ValueError, match=message):
        Plan(SHAPE, layers)


def test_inconsistent_kv_heads_in_json_are_refused():
    data = Plan(SHAPE, [LayerPlan((0, 1), (3,))] * 2).to_dict()
    data["layers"][0]["kv_heads"] = [0, 1]
    with pytest.raises(ValueError, match="kv_heads .* do not match"):
        Plan.from_dict(data)


def test_json_round_trip(tmp_path):
    plan = Plan(SHAPE, [LayerPlan((0, 5, 6), range(10)), LayerPlan((), (3, 1))])
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan


@pytest.mark.parametrize(
    "heads, q_order, kv_order",
    [
        ((0, 1, 4, 5), [0, 1, 4, 5], [0, 1]),  # balanced: no KV repeat
        ((4, 5, 6, 7), [4, 5, 6, 7], [1]),  # whole KV group dropped
        ((0, 1, 2, 5), [0, 1, 2, 5], [0, 0, 0, 1]),  # 3 + 1: one KV slot per query
        ((0, 1, 4, 5, 6, 7), [0, 1, 4, 5, 6, 7], [0, 1, 1]),  # 2 + 4: gcd 2
        ((), [], []),
    ],
)
def test_attention_layout_is_regular_and_exact(heads, q_order, kv_order):
    got_q, got_kv = attention_layout(LayerPlan(heads, ()), SHAPE)
    assert (got_q, got_kv) == (q_order, kv_order)
    if got_q:
        per_slot = len(got_q) // len(got_kv)
        # query i reads KV slot i // per_slot, which must hold its own dense KV head
        assert all(got_kv[i // per_slot] == h // 4 for i, h in enumerate(got_q))


def test_parameter_counts():
    dense = Plan.dense(SHAPE)
    per_layer = 64 * (128 + 2 * 32) + 128 * 64 + 64 + 3 * 64 * 96 + 64
    assert dense.block_params() == 2 * per_layer
    assert dense.kept_fraction() == 1.0
    half_mlp = Plan(SHAPE, [LayerPlan(range(8), range(48))] * 2)
    assert dense.block_params() - half_mlp.block_params() == 2 * 3 * 64 * 48


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unsupported architecture model_type='gpt2'"):
        family_of(GPT2Config())
