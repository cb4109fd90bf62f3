"""Saved shrunk checkpoints reload exactly, with and without this package installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from darwin_modifier.format.shrink import shrink
from darwin_modifier.plan import DenseShape, LayerPlan, Plan
from tests.conftest import tiny_model

IDS = torch.arange(20).view(2, 10)
LAYERS = [
    LayerPlan((), range(0, 96, 3)),
    LayerPlan((0, 1, 2, 5), ()),
    LayerPlan((4, 5, 6, 7), range(40)),
    LayerPlan(range(8), range(96)),
]


@pytest.fixture
def saved(tmp_path, family):
    model = tiny_model(family)
    small = shrink(model, Plan(DenseShape.from_config(model.config), LAYERS))
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = small(IDS).logits
    return tmp_path, expected


def test_round_trip_is_exact(saved):
    path, expected = saved
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert type(loaded).__module__.startswith("darwin_modifier.format")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, expected)


def test_config_tells_the_truth(saved):
    path, _ = saved
    config = json.loads((path / "config.json").read_text())
    assert config["layer_num_attention_heads"] == [0, 4, 4, 8]
    assert config["layer_num_key_value_heads"] == [0, 4, 1, 2]
    assert config["layer_intermediate_size"] == [32, 0, 40, 96]
    assert config["head_dim"] == 16
    assert config["num_attention_heads"] == 8  # globals keep the dense parent's values
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert AutoConfig.from_pretrained(path).layer_num_attention_heads == [0, 4, 4, 8]


REMOTE_LOAD = """
import sys, torch
sys.modules["darwin_modifier"] = None  # the package cannot be imported here
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert not type(model).__module__.startswith("darwin_modifier"), type(model).__module__
with torch.no_grad():
    logits = model(torch.arange(20).view(2, 10)).logits
torch.save(logits, sys.argv[2])
"""


def load_in_fresh_interpreter(script, checkpoint, tmp_path_factory):
    """Run ``script CHECKPOINT OUT`` with stdin closed; (its stdout, saved logits)."""
    out = tmp_path_factory.mktemp("fresh") / "logits.pt"
    result = subprocess.run(
        [sys.executable, "-c", script, str(checkpoint), str(out)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path_factory.getbasetemp(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, torch.load(out)


def test_trust_remote_code_load_without_the_package(saved, tmp_path_factory):
    path, expected = saved
    _, logits = load_in_fresh_interpreter(REMOTE_LOAD, path, tmp_path_factory)
    assert torch.equal(logits, expected)


# A fresh interpreter, as lm-eval or a user's script: transformers only, stdin closed
# (transformers would otherwise prompt for trust_remote_code).
PLAIN_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    logits = model(torch.arange(20).view(2, 10)).logits
torch.save(logits, sys.argv[2])
print(type(model).__module__, "llmcompressor" in sys.modules)
"""


def test_installed_package_loads_without_flags_or_import(saved, tmp_path_factory):
    """The start-up hook registers the Auto classes when transformers looks ours up."""
    path, expected = saved
    stdout, logits = load_in_fresh_interpreter(PLAIN_LOAD, path, tmp_path_factory)
    module, llmcompressor_loaded = stdout.split()[-2:]
    assert module == "darwin_modifier.format.modeling_darwinlm"
    assert llmcompressor_loaded == "False"  # loading costs no compression imports
    assert torch.equal(logits, expected)
