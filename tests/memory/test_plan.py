"""The memory plan: the shipped recipes fit their GPUs from config.json alone, a run
that cannot fit is refused naming the fix, and on SmolLM2 the plan matches a measured
search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from darwin_modifier.cli import main
from darwin_modifier.memory import GiB, ModelSpec, check_run, plan_run, refusal
from darwin_modifier.pipeline import DarwinLMConfig

REPO = Path(__file__).parents[2]
CONFIGS = Path(__file__).parent / "configs"
SHIPPED = [
    ("llama2_7b_to_2.7b", "llama2_7b", 80),
    ("llama31_8b_to_4.6b", "llama31_8b", 80),
    ("qwen25_14b_to_8.4b", "qwen25_14b", 141),
]


def plan_cli(recipe: Path, config: str, gpu_gb: int, tmp_path: Path, *extra) -> dict:
    out = tmp_path / "plan.json"
    args = ["plan", "--recipe", str(recipe), "--model", str(CONFIGS / config)]
    args += ["--gpu-mem", str(gpu_gb), "--num-samples", "2048", "--seq-len", "4096"]
    args += ["--host-mem", "2000", "--json", str(out), *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return {"code": exit_info.value.code, **json.loads(out.read_text())}


@pytest.mark.parametrize("recipe, config, gpu_gb", SHIPPED)
def test_shipped_recipes_fit_one_gpu(recipe, config, gpu_gb, tmp_path, capsys):
    plan = plan_cli(REPO / "recipes" / f"{recipe}.yaml", config, gpu_gb, tmp_path)
    assert plan["code"] == 0, plan["refusal"]
    assert plan["device_peak_gib"] < gpu_gb * 1e9 / GiB
    assert set(plan["phases"]) == {
        "database",
        "search: dense targets",
        "search: light training",
    }
    assert "fits" in capsys.readouterr().out


def test_plan_reads_the_config_alone():
    """Built on the meta device: transformers' own parameter counts, no weights."""
    assert ModelSpec.from_pretrained(str(CONFIGS / "llama31_8b")).total_params == (
        8_030_261_248
    )
    qwen = ModelSpec.from_pretrained(str(CONFIGS / "qwen25_14b"))
    assert qwen.total_params == 14_770_033_664 and qwen.dtype == torch.bfloat16


def test_8b_search_without_the_memory_settings_is_refused_naming_them(tmp_path):
    recipe = (REPO / "recipes" / "llama31_8b_to_4.6b.yaml").read_text()
    recipe = recipe.replace("gradient_checkpointing: true", "")
    recipe = recipe.replace("train_embeddings: false", "")
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    plan = plan_cli(path, "llama31_8b", 80, tmp_path)
    assert plan["code"] == 1
    assert "search: light training phase needs about" in plan["refusal"]
    assert (
        "set gradient_checkpointing: true, train_embeddings: false" in (plan["refusal"])
    )


def test_a_target_too_large_for_any_setting_says_so():
    spec = ModelSpec.from_pretrained(str(CONFIGS / "qwen25_14b"))
    config = DarwinLMConfig(target_fraction=0.9, search_seq_len=4096)
    run = dict(device="cuda", device_capacity=int(80e9), host_capacity=None)
    plan = plan_run(spec, config, **run)
    assert not plan.fits_device()
    assert "no memory setting of the search fits" in refusal(plan, spec, config, **run)


def test_calibration_beyond_host_memory_is_refused_before_work(monkeypatch):
    """Llama-3.1-8B: 2^24 calibration tokens need 128 GiB of host memory for LLM
    Compressor's activation cache; the check names how many samples fit."""
    config = AutoConfig.from_pretrained(CONFIGS / "llama31_8b")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    spec = ModelSpec.from_model(model)
    darwin = DarwinLMConfig(generations=0)
    run = dict(calibration_seq_len=4096, device="cpu", host_capacity=256 * GiB)
    plan = plan_run(spec, darwin, calibration_tokens=2**23, **run)
    assert plan.phases[0].host["activation cache"] == 2**23 * 4096 * 2
    assert refusal(plan, spec, darwin, calibration_tokens=2**23, **run) is None

    monkeypatch.setattr(
        "darwin_modifier.memory.check.machine_capacity",
        lambda loaded=0: ("cpu", None, 140 * GiB),
    )
    with pytest.raises(ValueError, match="lower the calibration samples to at most"):
        check_run(model, darwin, 2**24, 4096)


def test_smollm2_search_peak_is_planned_within_20_percent(tmp_path):
    """A real search on SmolLM2 (fp32, CPU): peak RSS above the process baseline
    against the plan of the same phase."""
    out = tmp_path / "memory.json"
    script = REPO / "benchmarks" / "memory.py"
    subprocess.run(
        [sys.executable, str(script), "--only-measure", "--json", str(out)],
        check=True,
        timeout=900,
    )
    measured = json.loads(out.read_text())["smollm2_search"]
    assert 0.8 <= measured["measured_over_planned"] <= 1.2, measured
