"""``vllm serve DIR`` serves a shrunk checkpoint through the plugin: the OpenAI
completions endpoint gives the same greedy text as the offline ``LLM`` class, and the
bf16 checkpoint loads without a per-tensor dtype warning."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from tests.serving.conftest import VLLM_CPU_ENV, run_checked  # noqa: E402

PROMPT = "The Python standard library provides"
MAX_TOKENS = 24
ENGINE_ARGS = ["--max-model-len", "256", "--enforce-eager", "--seed", "0"]

OFFLINE = """
import json, os, sys
from vllm import LLM, SamplingParams

llm = LLM(model=sys.argv[1], max_model_len=256, enforce_eager=True, seed=0)
params = SamplingParams(temperature=0.0, max_tokens=int(sys.argv[3]))
(out,) = llm.generate([sys.argv[2]], params)
print("RESULT", json.dumps({"text": out.outputs[0].text}))
sys.stdout.flush()
llm.llm_engine.engine_core.shutdown()
os._exit(0)  # vllm-cpu may abort in interpreter teardown after the work is done
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.time() + 420
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(
                f"vllm serve exited {server.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    pytest.fail(f"vllm serve not healthy after 420 s:\n{log.read_text()[-4000:]}")


def complete(url: str, model: str) -> str:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    request = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["text"]


def test_vllm_serve_matches_offline(smollm2_dense_and_sliced, tmp_path):
    _, model = smollm2_dense_and_sliced
    env = {**os.environ, **VLLM_CPU_ENV}
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    vllm = Path(sys.executable).with_name("vllm")
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [str(vllm), "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
            + ENGINE_ARGS,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_healthy(server, url, log)
            served = complete(url, str(model))
        finally:
            os.killpg(server.pid, 15)  # the engine core and workers too
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
    offline = run_checked(
        [sys.executable, "-c", OFFLINE, str(model), PROMPT, str(MAX_TOKENS)], 420
    )
    (line,) = [x for x in offline.splitlines() if x.startswith("RESULT ")]
    expected = json.loads(line.removeprefix("RESULT "))["text"]
    assert served == expected
    assert len(served.split()) > 3  # real text, not an empty completion
    server_log = log.read_text()
    assert "DarwinLMLlamaForCausalLM" in server_log
    assert "Attempted to load weight" not in server_log  # bf16 saved, bf16 served


def test_vllm_bench_runs_the_plugin_model(smollm2_dense_and_sliced, tmp_path):
    """``vllm bench throughput`` (what benchmarks/vllm_bench.py drives) takes the
    shrunk checkpoint as it is."""
    _, model = smollm2_dense_and_sliced
    out = tmp_path / "throughput.json"
    command = [str(Path(sys.executable).with_name("vllm")), "bench", "throughput"]
    command += ["--model", str(model), "--dataset-name", "random", "--num-prompts", "4"]
    command += ["--input-len", "32", "--output-len", "8", "--max-model-len", "128"]
    command += ["--random-input-len", "32", "--random-output-len", "8"]
    command += ["--enforce-eager", "--seed", "0", "--output-json", str(out)]
    output = run_checked(command, timeout=420)
    result = json.loads(out.read_text())
    assert result["num_requests"] == 4
    assert result["total_num_tokens"] >= 4 * 8  # prompts + the 8 new tokens each
    assert result["tokens_per_second"] > 0
    assert "DarwinLMLlamaForCausalLM" in output
