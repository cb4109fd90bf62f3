"""Shrink must equal the masked dense model, layout by layout and family by family."""

from __future__ import annotations

import copy

import pytest
import torch

from darwin_modifier.format.shrink import shrink
from darwin_modifier.plan import DenseShape, LayerPlan, Plan
from tests.conftest import tiny_model

INPUT = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))


def masked_dense(model, plan: Plan):
    """The dense model with every pruned head's / channel's output contribution
    zeroed."""
    masked = copy.deepcopy(model)
    hd = plan.shape.head_dim
    for layer, lp in zip(masked.model.layers, plan.layers):
        head_mask = torch.zeros(plan.shape.num_heads)
        head_mask[list(lp.q_heads)] = 1
        layer.self_attn.o_proj.weight.data *= head_mask.repeat_interleave(hd)
        chan_mask = torch.zeros(plan.shape.intermediate_size)
        chan_mask[list(lp.mlp_channels)] = 1
        layer.mlp.down_proj.weight.data *= chan_mask
    return masked


def logits(model, ids=INPUT) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


PLANS = {
    # regular GQA: 2 query heads in each of both KV groups, MLP halved
    "balanced": [LayerPlan((0, 1, 4, 5), range(0, 96, 2))] * 4,
    # whole KV group removed (the regular layout)
    "kv_group": [LayerPlan((4, 5, 6, 7), range(48))] * 4,
    # paper's query-only removal: unbalanced groups -> repeated KV heads
    "irregular": [
        LayerPlan((0, 1, 2, 5), range(10)),
        LayerPlan((0, 4, 5, 6, 7), range(96)),
        LayerPlan((3,), (5,)),
        LayerPlan((0, 1, 2, 3, 4, 5), range(1, 96, 3)),
    ],
    "layer0_no_attention": [LayerPlan((), range(96))]
    + [LayerPlan(range(8), range(50))] * 3,
    "layer_empty_and_mlp_removed": [
        LayerPlan((1, 2, 5, 6), ()),
        LayerPlan((), ()),
        LayerPlan(range(8), range(96)),
        LayerPlan((0, 4), range(7)),
    ],
}


@pytest.mark.parametrize("name", PLANS)
def test_shrink_equals_masked_dense(family, name):
    model = tiny_model(family)
    plan = Plan(DenseShape.from_config(model.config), PLANS[name])
    small = shrink(model, plan)
    torch.testing.assert_close(
        logits(small), logits(masked_dense(model, plan)), atol=1e-5, rtol=1e-5
    )
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in model.parameters()
    )


def test_identity_plan_keeps_function_and_size(family):
    model = tiny_model(family)
    small = shrink(model, Plan.dense(DenseShape.from_config(model.config)))
    torch.testing.assert_close(logits(small), logits(model), atol=1e-6, rtol=1e-6)
    assert sum(p.numel() for p in small.parameters()) == sum(
        p.numel() for p in model.parameters()
    )


def test_physical_shapes_follow_plan():
    model = tiny_model("llama")
    plan = Plan(DenseShape.from_config(model.config), PLANS["irregular"])
    small = shrink(model, plan)
    attn = small.model.layers[0].self_attn
    # 3 queries read KV head 0 and 1 reads KV head 1: gcd 1 -> 4 KV slots
    assert attn.q_proj.out_features == 4 * 16 and attn.k_proj.out_features == 4 * 16
    assert small.model.layers[1].self_attn.k_proj.out_features == 5 * 16
    assert small.model.layers[0].mlp.down_proj.in_features == 10
    # layer 3: 4 + 2 queries -> gcd 2 -> KV head 0 twice, KV head 1 once
    assert small.config.layer_num_key_value_heads == [4, 5, 1, 3]
    assert (
        sum(p.numel() for p in small.parameters()) - 128 * 64 - 64
        == plan.block_params()
    )


def test_generate_with_cache_when_layer0_has_no_attention(family):
    model = tiny_model(family)
    plan = Plan(DenseShape.from_config(model.config), PLANS["layer0_no_attention"])
    small = shrink(model, plan)
    reference = masked_dense(model, plan)
    kwargs = dict(
        max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(INPUT)
    )
    out = small.generate(INPUT, **kwargs)
    torch.testing.assert_close(out, reference.generate(INPUT, **kwargs))
    # the cache was used: a no-cache run gives the same tokens
    torch.testing.assert_close(out, small.generate(INPUT, use_cache=False, **kwargs))


def test_database_weights_replace_sliced_columns():
    model = tiny_model("llama")
    plan = Plan(DenseShape.from_config(model.config), PLANS["balanced"])
    new_down = torch.randn(64, 48)
    small = shrink(model, plan, overrides={(2, "down_proj"): new_down})
    assert torch.equal(small.model.layers[2].mlp.down_proj.weight, new_down)


def test_a_shrunk_model_can_be_copied(family):
    """``copy.deepcopy`` (a bf16 copy to save next to the fp32 model, as benchmarks
    do) gives an equal, independent model."""
    model = tiny_model(family)
    shape = DenseShape.from_config(model.config)
    small = shrink(model, Plan(shape, [LayerPlan((0, 1, 2, 3), range(40))] * 4))
    twin = copy.deepcopy(small)
    torch.testing.assert_close(logits(twin), logits(small))
    next(twin.parameters()).data.zero_()
    assert next(small.parameters()).abs().sum() > 0
