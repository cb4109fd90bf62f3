"""Configs of shrunk (non-uniform) DarwinLM checkpoints.

Global fields keep the dense parent's values (so tools that read them see the familiar
model); the per-layer lists give what each decoder layer really has, 0 meaning that
sub-block is removed. This file is copied into every saved checkpoint and imported there
as remote code, so it may import only transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config


def _fill_and_check_layer_sizes(config) -> None:
    """Default missing lists to the dense sizes and refuse layouts kernels cannot
    run."""
    n = config.num_hidden_layers
    defaults = {
        "layer_num_attention_heads": config.num_attention_heads,
        "layer_num_key_value_heads": config.num_key_value_heads,
        "layer_intermediate_size": config.intermediate_size,
    }
    for name, dense in defaults.items():
        values = getattr(config, name)
        values = [dense] * n if values is None else [int(v) for v in values]
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} layers")
        if any(v < 0 for v in values):
            raise ValueError(f"{name} has a negative entry: {values}")
        setattr(config, name, values)
    heads = zip(config.layer_num_attention_heads, config.layer_num_key_value_heads)
    for i, (q, kv) in enumerate(heads):
        if (q == 0) != (kv == 0) or (q and q % kv):
            raise ValueError(
                f"layer {i}: {q} query heads cannot share {kv} KV heads evenly; "
                "every KV head must serve the same number of query heads"
            )


@strict
class DarwinLMLlamaConfig(LlamaConfig):
    model_type = "darwinlm_llama"
    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_size: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_layer_sizes(self)


@strict
class DarwinLMQwen2Config(Qwen2Config):
    model_type = "darwinlm_qwen2"
    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_size: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _fill_and_check_layer_sizes(self)


__all__ = ["DarwinLMLlamaConfig", "DarwinLMQwen2Config"]
