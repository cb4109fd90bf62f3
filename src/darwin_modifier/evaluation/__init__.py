"""Measuring quality as a library: one KL (:mod:`~darwin_modifier.evaluation.kl`),
held-out perplexity and KL to dense (:mod:`~darwin_modifier.evaluation.quality`), and
metrics of a running vLLM engine (:mod:`~darwin_modifier.evaluation.vllm_metrics`).
Side-by-side speed comparisons are benchmarks (``benchmarks/serve.py``)."""
