"""DarwinLM -> quantization in one recipe, run stage by stage (modifier/chain.py).

Tiny model -> DarwinLM stage (no search generations: the uniform parent, which already
removes a whole attention block) -> W8A8 (``QuantizationModifier``) or W4A16
(``GPTQModifier``) stage -> compressed-tensors checkpoint that keeps the per-layer
sizes, gains ``quantization_config`` and reloads in transformers.

``python -m tests.modifier.test_quantize_chain OUT SCHEME...`` builds the checkpoints
into ``OUT/<SCHEME>``; the serve suite (tests/serving/test_vllm_quantized.py) calls it
with the compress environment's interpreter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig

import darwin_modifier  # noqa: F401  (the start-up hook, where no .pth installed it)
from darwin_modifier.data import corpus_split
from darwin_modifier.modifier.chain import oneshot_stages, split_stages
from darwin_modifier.modifier.rules import (
    check_stages,
    refuse_quantization_in_same_pass,
)
from tests.conftest import save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]

# Every width the DarwinLM stage can produce fits W4A16's groups of 128 columns:
# a KV group is 4 heads x 32 = 128 o_proj columns, MLP widths are multiples of 128.
# head_dim 32 is within vLLM's CPU attention head sizes.
SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=32,
)

DARWIN_STAGE = """
darwin_stage:
  darwin_modifiers:
    DarwinLMModifier:
      target_fraction: 0.5
      database_dir: {work}/db
      search_dir: {work}/search
      mlp_multiple: {mlp_multiple}
      gqa_mode: {gqa_mode}
      generations: 0
"""
# W8A8: INT8 weights per channel, INT8 activations per token (dynamic): data-free.
# W4A16 by GPTQ: INT4 weights in groups of 128, calibrated; one down_proj kept in
# full precision, so the serve test also covers a mixed checkpoint.
QUANT_STAGE = {
    "W8A8": """
quant_stage:
  quant_modifiers:
    QuantizationModifier: {scheme: W8A8, targets: [Linear], ignore: [lm_head]}
""",
    "W4A16": """
quant_stage:
  quant_modifiers:
    GPTQModifier:
      scheme: W4A16
      targets: [Linear]
      ignore: [lm_head, "re:.*layers[.]0[.]mlp[.]down_proj$"]
""",
    "FP8_DYNAMIC": """
quant_stage:
  quant_modifiers:
    QuantizationModifier: {scheme: FP8_DYNAMIC, targets: [Linear], ignore: [lm_head]}
""",
}


def recipe(scheme: str, work, mlp_multiple: int = 128, gqa_mode="kv_group") -> str:
    darwin = DARWIN_STAGE.format(
        work=work, mlp_multiple=mlp_multiple, gqa_mode=gqa_mode
    )
    return darwin + QUANT_STAGE[scheme]


def save_tiny(path: Path, dtype=torch.float32) -> Path:
    return save_tiny_checkpoint(path, dtype, **SHAPE)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Wider than conftest's tiny model: widths must fit quantization groups."""
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def calibration(n: int = 8) -> dict:
    return dict(
        dataset=Dataset.from_dict({"text": corpus_split("calibration")[:n]}),
        num_calibration_samples=n,
        max_seq_length=64,
        shuffle_calibration_samples=False,
    )


def build_checkpoint(model_dir: Path, out: Path, scheme: str, work: Path):
    """Tiny model -> DarwinLM -> ``scheme``, saved compressed to ``out``."""
    return oneshot_stages(
        str(model_dir), recipe(scheme, work), output_dir=out, **calibration()
    )


@pytest.fixture(scope="module")
def w8a8(tiny_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("w8a8")
    model = build_checkpoint(tiny_dir, work / "out", "W8A8", work)
    return model, work / "out"


def _layer_sizes(config: dict) -> list[tuple[int, int, int]]:
    return list(
        zip(
            config["layer_num_attention_heads"],
            config["layer_num_key_value_heads"],
            config["layer_intermediate_size"],
        )
    )


def _module_sizes(model) -> list[tuple[int, int, int]]:
    sizes = []
    for layer in model.model.layers:
        q, kv = layer.attention_size
        sizes.append((q, kv, layer.mlp_width))
    return sizes


def test_w8a8_checkpoint(w8a8):
    model, out = w8a8
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "darwinlm_llama"
    sizes = _layer_sizes(config)
    assert sizes != [(8, 2, 256)] * 4  # shrunk
    assert all(w % 128 == 0 and (q * 32) % 128 == 0 for q, _, w in sizes)
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["format"] == "int-quantized"
    assert quant["ignore"] == ["lm_head"]
    (group,) = quant["config_groups"].values()
    assert (group["weights"]["num_bits"], group["weights"]["strategy"]) == (
        8,
        "channel",
    )
    assert group["input_activations"]["dynamic"] is True
    # recipe.yaml lists both stages
    saved_recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert list(saved_recipe) == ["darwin_stage", "quant_stage"]

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == "DarwinLMLlamaForCausalLM"
    assert _module_sizes(reloaded) == sizes == _module_sizes(model)
    attn = next(layer.self_attn for layer in reloaded.model.layers if layer.self_attn)
    assert attn.o_proj.weight.dtype == torch.int8  # compressed weights, on the fly
    ids = torch.arange(1, 17).view(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)


def test_gptq_w4a16_checkpoint(tiny_dir, tmp_path):
    model = build_checkpoint(tiny_dir, tmp_path / "out", "W4A16", tmp_path)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "darwinlm_llama"
    quant = config["quantization_config"]
    assert quant["format"] == "pack-quantized"
    (group,) = quant["config_groups"].values()
    assert (group["weights"]["num_bits"], group["weights"]["group_size"]) == (4, 128)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert _module_sizes(reloaded) == _layer_sizes(config)
    ids = torch.arange(1, 17).view(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(mlp_multiple=32), "set mlp_multiple: 128"),
        (dict(gqa_mode="query"), "set gqa_mode: kv_group"),
    ],
)
def test_misaligned_widths_refused_before_any_work(
    tiny_dir, tmp_path, settings, expected
):
    with pytest.raises(ValueError, match=expected):
        oneshot_stages(
            str(tiny_dir), recipe("W4A16", tmp_path, **settings), **calibration()
        )
    assert not (tmp_path / "db").exists()  # not one calibration batch ran


def test_quantization_in_the_darwinlm_stage_refused(tiny_dir, tmp_path):
    """One pass would quantize the dense layers that DarwinLM then replaces."""
    one_stage = recipe("W8A8", tmp_path).replace("quant_stage:\n", "")
    assert len(split_stages(one_stage)) == 1
    with pytest.raises(ValueError, match="same oneshot pass"):
        oneshot_stages(str(tiny_dir), one_stage, **calibration())
    assert not (tmp_path / "db").exists()


def test_refusal_hook_for_on_initialize(tmp_path):
    """For DarwinLMModifier.on_initialize: sees only its own oneshot's modifiers."""
    from llmcompressor.core import active_session

    darwin, quant = split_stages(recipe("W8A8", tmp_path))
    lifecycle = active_session().lifecycle
    try:
        lifecycle.recipe = darwin  # a stage-by-stage run
        refuse_quantization_in_same_pass(darwin.modifiers[0])
        lifecycle.recipe = split_stages([darwin.modifiers + quant.modifiers])[0]
        with pytest.raises(ValueError, match="same oneshot pass"):
            refuse_quantization_in_same_pass(darwin.modifiers[0])
    finally:
        active_session().reset()


# SmolLM2-135M-Instruct's sizes (the embedded default model)
SMOLLM2 = LlamaConfig(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
)


def test_smollm2_w8a8_recipe():
    stages = split_stages(REPO / "recipes" / "smollm2_cpu_w8a8.yaml")
    assert [type(m).__name__ for s in stages for m in s.modifiers] == [
        "DarwinLMModifier",
        "QuantizationModifier",
    ]
    check_stages(stages, SMOLLM2)  # W8A8: no group constraint
    # W4A16 cannot follow on SmolLM2 (hidden 576, KV groups of 192 columns): said early
    gptq = split_stages(QUANT_STAGE["W4A16"])
    with pytest.raises(ValueError, match="hidden_size 576") as refused:
        check_stages([stages[0], *gptq], SMOLLM2)
    assert "set mlp_multiple: 128" in str(refused.value)


if __name__ == "__main__":
    # python -m tests.modifier.test_quantize_chain OUT SCHEME... (from the repo root)
    import tempfile

    out_root = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny(Path(tmp) / "tiny")
        for scheme in sys.argv[2:]:
            build_checkpoint(tiny, out_root / scheme, scheme, Path(tmp) / scheme)
