"""Recipe round trip: YAML -> DarwinLMModifier -> oneshot -> saved checkpoint ->
reload."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from darwin_modifier.data import corpus_split
from tests.conftest import save_tiny_checkpoint

RECIPE = """
darwin_stage:
  darwin_modifiers:
    DarwinLMModifier:
      target_fraction: 0.5
      database_dir: {db}
      search_dir: {search}
      mlp_multiple: 8
      generations: 2
      offspring: 4
      selection_stages:
        - {{survivors: 2, train_tokens: 64, fitness_tokens: 64}}
        - {{survivors: 1, train_tokens: 64, fitness_tokens: 128}}
      search_seq_len: 32
      fitness_pool_tokens: 512
      train_pool_tokens: 512
"""


def calibration_dataset(n: int = 8) -> Dataset:
    return Dataset.from_dict({"text": corpus_split("calibration")[:n]})


def run_oneshot(model_dir, tmp_path, **overrides):
    from llmcompressor import oneshot

    import darwin_modifier  # noqa: F401  (the start-up hook, where no .pth installed it)

    recipe = RECIPE.format(db=tmp_path / "db", search=tmp_path / "search")
    for key, value in overrides.items():
        recipe += f"      {key}: {value}\n"
    return oneshot(
        model=str(model_dir),
        dataset=calibration_dataset(),
        recipe=recipe,
        output_dir=str(tmp_path / "out"),
        num_calibration_samples=8,
        max_seq_length=64,
        shuffle_calibration_samples=False,
    )


def test_recipe_round_trip(tiny_dir, tmp_path):
    model = run_oneshot(tiny_dir, tmp_path)
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "darwinlm_llama"
    result = json.loads((tmp_path / "search" / "result.json").read_text())
    assert config["layer_intermediate_size"] == [
        w for _, _, w in result["darwinlm"]["layer_sizes"]
    ]
    dense_blocks = result["uniform"]["params"] / result["darwinlm"]["kept_fraction"]
    assert result["darwinlm"]["params"] <= 0.5 * dense_blocks + 1
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.arange(1, 17).view(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)
    assert (tmp_path / "search" / "profile.png").exists()
    assert (tmp_path / "search" / "search_curve.png").exists()
    assert len(result["fitness"]) == 2
    # the curve's last point is the saved model's KL on the probe's held-out windows
    assert result["history"][-1]["probe_kl"] == pytest.approx(
        probe_kl(tiny_dir, reloaded), rel=1e-4
    )


def probe_kl(model_dir, model) -> float:
    """KL(dense ‖ model) on the probe windows the recipe's search scored on."""
    from transformers import AutoTokenizer

    from darwin_modifier.evaluation.kl import chunked_logits, kl_per_token
    from darwin_modifier.pipeline import DarwinLMConfig
    from darwin_modifier.pipeline.search import build_probe

    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = DarwinLMConfig(search_seq_len=32)  # the recipe's probe settings
    probe = build_probe(config, dense, AutoTokenizer.from_pretrained(model_dir))
    total, count = 0.0, 0
    with torch.no_grad():
        for i, window in enumerate(probe.fitness.split(1)):
            for start, logits in chunked_logits(model.eval(), window):
                first = i * window.shape[1] + start
                targets = probe.targets[torch.arange(first, first + len(logits))]
                total += float(kl_per_token(targets, logits).sum())
                count += len(logits)
    return total / count


def saved_dtypes(checkpoint) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(name).get_dtype()) for name in f.keys()}


@pytest.mark.parametrize(
    ("given", "save_dtype", "saved"),
    [
        (torch.bfloat16, None, "BF16"),  # a hub model: saved as it came
        (torch.float32, "bfloat16", "BF16"),  # the fp32 default model, saved to serve
    ],
)
def test_checkpoint_is_saved_in_the_users_dtype(tmp_path, given, save_dtype, saved):
    model_dir = save_tiny_checkpoint(tmp_path / "dense", dtype=given)
    overrides = {} if save_dtype is None else {"save_dtype": save_dtype}
    run_oneshot(model_dir, tmp_path, **overrides)
    assert saved_dtypes(tmp_path / "out") == {saved}
