"""Tiny random models shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A small random dense model of the family, fp32, eval mode."""
    torch.manual_seed(seed)
    values = {**TINY, **overrides}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**values))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**values))
    else:
        raise ValueError(family)
    for p in model.parameters():  # HF init is tiny; larger weights make tests sharper
        p.data.normal_(0, 0.2) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(params=["llama", "qwen2"])
def family(request) -> str:
    return request.param


def save_tiny_checkpoint(path: Path, dtype=torch.float32, **overrides) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer, saved like a hub model."""
    from transformers import AutoTokenizer

    from darwin_modifier.data import fetch_default_model

    tokenizer = AutoTokenizer.from_pretrained(fetch_default_model())
    model = tiny_model("llama", vocab_size=len(tokenizer), **overrides).to(dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
