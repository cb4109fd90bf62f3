"""The quality benchmark's Torch-Pruning peer: the size it promises, a working model,
and the dense model's function with the removed heads and channels zeroed."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from darwin_modifier.evaluation.quality import count_params
from tests.conftest import tiny_model

# one file from benchmarks/, without putting the folder (serve.py, memory.py...) on
# the path of the whole test session
_SPEC = importlib.util.spec_from_file_location(
    "torch_pruning_peer",
    Path(__file__).parents[2] / "benchmarks" / "torch_pruning_peer.py",
)
peer = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = peer  # its dataclasses look their module up
_SPEC.loader.exec_module(peer)

HEAD_DIM = 16


@pytest.fixture(scope="module")
def dense() -> LlamaForCausalLM:
    # 6 query heads in 2 KV groups: 3, 2 or 1 query heads per group can stay
    return tiny_model(
        vocab_size=256,
        hidden_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        intermediate_size=128,
    )


def _zeroed_reference(dense, pruned):
    """The dense model with every unit the pruned one lacks zeroed at its output."""
    reference = copy.deepcopy(dense)
    with torch.no_grad():
        for full, small in zip(reference.model.layers, pruned.model.layers):
            q, kept_q = full.self_attn.q_proj.weight, small.self_attn.q_proj.weight
            heads = [
                h
                for h in range(q.shape[0] // HEAD_DIM)
                if any(
                    torch.equal(
                        q[h * HEAD_DIM : (h + 1) * HEAD_DIM], kept_q[j : j + HEAD_DIM]
                    )
                    for j in range(0, kept_q.shape[0], HEAD_DIM)
                )
            ]
            mask = torch.zeros(q.shape[0], dtype=torch.bool)
            for h in heads:
                mask[h * HEAD_DIM : (h + 1) * HEAD_DIM] = True
            full.self_attn.o_proj.weight[:, ~mask] = 0
            gate, kept_gate = full.mlp.gate_proj.weight, small.mlp.gate_proj.weight
            rows = [any(torch.equal(r, k) for k in kept_gate) for r in gate]
            full.mlp.down_proj.weight[:, ~torch.tensor(rows)] = 0
    return reference


# 0.7: 4 of 6 query heads; 0.5: one query head per KV head (Torch-Pruning 1.6.1's
# second GQA check would leave attention dense) and an MLP width off the 8-grid
@pytest.mark.parametrize("fraction", [0.7, 0.5])
@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_pruned_to_the_target_and_equal_to_the_dense_model_with_units_zeroed(
    dense, importance, fraction, tmp_path
):
    target = int(fraction * count_params(dense))
    calibration = torch.randint(0, 256, (4, 24))
    pruned = peer.prune_to_params(copy.deepcopy(dense), calibration, target, importance)
    shape = peer.describe(pruned)
    assert (1 - peer.TOLERANCE) * target <= shape["params"] <= target
    assert len({tuple(layer.values()) for layer in shape["layers"]}) == 1  # uniform
    assert shape["layers"][0]["hidden_size"] == shape["hidden_size"] == 96
    assert shape["layers"][0]["kv_heads"] == 2
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        got = pruned(ids).logits
        want = _zeroed_reference(dense, pruned)(ids).logits
        pruned.save_pretrained(tmp_path)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reloaded, got)


def test_targets_out_of_reach_are_refused(dense):
    calibration = torch.randint(0, 256, (2, 16))
    with pytest.raises(ValueError, match="above dense"):
        peer.prune_to_params(copy.deepcopy(dense), calibration, 10**9)
    with pytest.raises(ValueError, match="smallest"):
        peer.prune_to_params(copy.deepcopy(dense), calibration, 1000)
    with pytest.raises(ValueError, match="importance"):
        peer.prune_to_params(copy.deepcopy(dense), calibration, 10**4, "random")
