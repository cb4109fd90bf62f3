"""Measuring results: held-out perplexity and KL to dense, and vLLM serving speed."""
