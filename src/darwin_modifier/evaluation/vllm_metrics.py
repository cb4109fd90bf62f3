"""Speed and perplexity of a model that a ``vllm.LLM`` already serves.

Offline ``LLM.generate`` on token-id prompts: greedy, ``ignore_eos`` (every request
makes exactly the tokens asked for, so runs compare) and no detokenizing (the tokenizer
stays out of the timed path). vLLM is imported inside the functions, so this module
loads in the compress environment too; calling them needs the serve environment.
``benchmarks/serving_harness.py`` drives these for a dense / shrunk comparison.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

__all__ = [
    "greedy_sampling",
    "measure_latency",
    "measure_perplexity",
    "measure_throughput",
    "timed_generate",
]


def greedy_sampling(max_tokens: int):
    """Greedy, exactly ``max_tokens`` new tokens, no text: only the engine is timed."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False
    )


def timed_generate(llm, prompts: Sequence[Sequence[int]], max_tokens: int):
    """``(seconds, outputs)`` of one ``generate`` call on token-id prompts."""
    from vllm.inputs import TokensPrompt

    inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
    start = time.perf_counter()
    outputs = llm.generate(inputs, greedy_sampling(max_tokens), use_tqdm=False)
    return time.perf_counter() - start, outputs


def measure_throughput(llm, prompts: Sequence[Sequence[int]], output_len: int) -> dict:
    """All prompts at once; generated tokens per second of wall time.

    Prefill is inside the wall time, as ``vllm bench throughput`` counts it.
    """
    seconds, outputs = timed_generate(llm, prompts, output_len)
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "seconds": seconds,
        "generated_tokens": generated,
        "tok_s": generated / seconds,
        "total_tok_s": (generated + prompt_tokens) / seconds,
    }


def measure_latency(
    llm, prompt: Sequence[int], output_len: int, iters: int = 1
) -> dict:
    """One sequence: time to first token, end-to-end time, decode tokens/s.

    The first token's time comes from a ``max_tokens=1`` run, so decode tokens/s is
    ``(output_len - 1) / (end_to_end - first_token)``. Best of ``iters``; the two
    kinds of run alternate so that a slow moment does not hit only one of them.
    """
    ttfts, e2es = [], []
    for _ in range(iters):
        ttfts.append(timed_generate(llm, [prompt], 1)[0])
        seconds, outputs = timed_generate(llm, [prompt], output_len)
        assert len(outputs[0].outputs[0].token_ids) == output_len
        e2es.append(seconds)
    ttft, e2e = min(ttfts), min(e2es)
    return {
        "ttft_s": ttft,
        "e2e_s": e2e,
        "decode_tok_s": (output_len - 1) / (e2e - ttft),
        "e2e_tok_s": output_len / e2e,
    }


def measure_perplexity(llm, windows: Sequence[Sequence[int]]) -> dict:
    """Teacher-forced perplexity of token windows, from vLLM's prompt logprobs.

    Counts as :func:`darwin_modifier.evaluation.quality.evaluate` does (every token
    after the first of each window), so the two sides' figures compare directly.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False
    )
    inputs = [TokensPrompt(prompt_token_ids=list(w)) for w in windows]
    outputs = llm.generate(inputs, params, use_tqdm=False)
    nll, count = 0.0, 0
    for window, output in zip(windows, outputs):
        for token, logprobs in zip(window[1:], output.prompt_logprobs[1:]):
            nll -= logprobs[token].logprob
            count += 1
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count}
