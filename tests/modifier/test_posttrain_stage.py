"""Post-training as a recipe stage: after DarwinLM, in YAML, saved in our format."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from darwin_modifier.cli import main
from darwin_modifier.modifier import DarwinLMTrainingModifier
from darwin_modifier.modifier.chain import run_oneshot_stages, split_stages
from darwin_modifier.modifier.rules import check_stages
from tests.modifier.test_oneshot import saved_dtypes

DARWIN = """
    DarwinLMModifier:
      target_fraction: 0.5
      database_dir: {tmp}/db
      search_dir: {tmp}/search
      mlp_multiple: 8
      generations: 1
      offspring: 2
      selection_stages:
        - {{survivors: 1, train_tokens: 32, fitness_tokens: 64}}
      search_seq_len: 32
      fitness_pool_tokens: 256
      train_pool_tokens: 256
"""

TRAIN = """
    DarwinLMTrainingModifier:
      tokens: 1024
      seq_len: 64
      learning_rate: 3.0e-3
      warmup_steps: 2
      bf16_autocast: false
      eval_windows: 4
      train_dir: {tmp}/train
"""


def _reload_matches(out, model, equal: bool = True) -> None:
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.arange(1, 17).view(1, 16)
    with torch.no_grad():
        a, b = reloaded(ids).logits, model.eval()(ids).logits
    if equal:
        torch.testing.assert_close(a, b)
    else:
        assert not torch.allclose(a, b, atol=1e-3)


def test_training_stage_after_darwin_stage_from_the_cli(tiny_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "darwin_stage:\n  darwin_modifiers:"
        + DARWIN.format(tmp=tmp_path)
        + "train_stage:\n  train_modifiers:"
        + TRAIN.format(tmp=tmp_path)
        + "      save_dtype: bfloat16\n"
    )
    out = tmp_path / "out"
    cli = ["compress", "--model", str(tiny_dir), "--recipe", str(recipe)]
    cli += ["--output-dir", str(out), "--num-samples", "8", "--seq-len", "64"]
    main(cli + ["--save-stages"])
    assert (out / "darwin" / "config.json").exists()  # the stage before training
    assert saved_dtypes(out / "darwin") == {"F32"}  # as the model came (auto)
    assert saved_dtypes(out) == {"BF16"}  # the training stage's save_dtype
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "darwinlm_llama"  # trained, and still shrunk
    history = json.loads((tmp_path / "train" / "posttrain_history.json").read_text())
    assert len(history["loss"]) == 1024 // 64
    first, last = history["eval"][0], history["eval"][-1]
    assert (first["step"], last["step"]) == (0, 16)
    assert last["ppl"] < 0.8 * first["ppl"]
    assert (tmp_path / "train" / "posttrain.png").exists()
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    _reload_matches(out / "darwin", trained, equal=False)


def test_distillation_in_the_same_stage_as_darwin(tiny_dir, tmp_path):
    """One oneshot pass: DarwinLM shrinks at finalize, then the trainer distils."""
    train = TRAIN.format(tmp=tmp_path) + f"      loss: kd\n      teacher: {tiny_dir}\n"
    recipe = "darwin_stage:\n  darwin_modifiers:" + DARWIN.format(tmp=tmp_path) + train
    out = tmp_path / "out"
    model = run_oneshot_stages(tiny_dir, recipe, out, num_samples=8, seq_len=64)
    history = json.loads((tmp_path / "train" / "posttrain_history.json").read_text())
    first, last = history["eval"][0], history["eval"][-1]
    assert last["kl"] < 0.95 * first["kl"]  # KL to the dense teacher
    assert json.loads((out / "config.json").read_text())["model_type"] == (
        "darwinlm_llama"
    )
    _reload_matches(out, model)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="set teacher"):
        DarwinLMTrainingModifier(loss="kd")
    with pytest.raises(ValueError, match="only to loss 'kd'"):
        DarwinLMTrainingModifier(ce_weight=0.5)
    with pytest.raises(ValueError, match="tokens"):
        DarwinLMTrainingModifier(tokens=0)


QUANT = "    QuantizationModifier:\n      scheme: W8A8\n      targets: [Linear]\n"


def _check(recipe: str, tiny_dir) -> None:
    from transformers import AutoConfig

    check_stages(split_stages(recipe), AutoConfig.from_pretrained(tiny_dir))


def test_quantization_in_the_training_stage_is_refused(tiny_dir, tmp_path):
    recipe = "train_stage:\n  train_modifiers:" + TRAIN.format(tmp=tmp_path)
    recipe += "  quant_modifiers:\n" + QUANT
    with pytest.raises(ValueError, match="DarwinLMTrainingModifier .* same oneshot"):
        _check(recipe, tiny_dir)


def test_training_after_quantization_is_refused(tiny_dir, tmp_path):
    recipe = "quant_stage:\n  quant_modifiers:\n" + QUANT
    recipe += "train_stage:\n  train_modifiers:" + TRAIN.format(tmp=tmp_path)
    with pytest.raises(ValueError, match="before the quantization stage"):
        _check(recipe, tiny_dir)


def test_training_listed_before_darwin_is_refused(tiny_dir, tmp_path):
    recipe = "one_stage:\n  train_modifiers:" + TRAIN.format(tmp=tmp_path)
    recipe += "  darwin_modifiers:" + DARWIN.format(tmp=tmp_path)
    with pytest.raises(ValueError, match="list it after"):
        _check(recipe, tiny_dir)


def test_a_teacher_without_config_is_refused_before_any_stage(tiny_dir, tmp_path):
    train = TRAIN.format(tmp=tmp_path) + f"      loss: kd\n      teacher: {tmp_path}\n"
    recipe = "darwin_stage:\n  darwin_modifiers:" + DARWIN.format(tmp=tmp_path)
    recipe += "train_stage:\n  train_modifiers:" + train
    with pytest.raises(ValueError, match="no loadable config"):
        _check(recipe, tiny_dir)


def test_cli_train_saves_a_trained_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "out"
    cli = ["train", "--model", str(tiny_dir), "--output-dir", str(out)]
    main(cli + ["--tokens", "512", "--seq-len", "64", "--lr", "3e-3"])
    history = json.loads(
        (tmp_path / "out-train" / "posttrain_history.json").read_text()
    )
    assert len(history["loss"]) == 512 // 64
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    _reload_matches(tiny_dir, trained, equal=False)
