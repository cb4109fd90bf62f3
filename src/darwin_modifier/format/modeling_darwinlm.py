"""Shrunk DarwinLM models, built layer by layer from transformers' own blocks.

No transformers model class allows per-layer head counts or widths, so each decoder
layer builds the parent family's attention / MLP / RMSNorm from a view of the config
carrying that layer's sizes, and skips a sub-block whose size is 0. The parent's
``Model.forward`` runs unchanged on these layers. Attention modules get compact cache
indices (0, 1, ... over the layers that have attention), because the cache reads its
length from slot 0.

This file is copied into every saved checkpoint and imported there as remote code, so it
may import only torch, transformers and its sibling configuration file.
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama import modeling_llama as llama
from transformers.models.qwen2 import modeling_qwen2 as qwen2

from .configuration_darwinlm import DarwinLMLlamaConfig, DarwinLMQwen2Config


class _LayerView:
    """The shared config seen with one layer's sizes; everything else reads through."""

    def __init__(self, config, **sizes):
        self._config = config
        self.__dict__.update(sizes)

    def __getattr__(self, name):
        if name == "_config":  # not set yet (copy.deepcopy, pickle): nothing to read
            raise AttributeError(name)
        return getattr(self._config, name)


class DarwinLMDecoderLayer(GradientCheckpointingLayer):
    """A pre-norm decoder layer whose attention and MLP may each be absent."""

    def __init__(self, config, layer_idx: int, cache_idx: int, blocks):
        super().__init__()
        self.blocks = blocks  # (attention, MLP, RMSNorm) classes of the parent family
        self.self_attn = self.input_layernorm = None
        self.mlp = self.post_attention_layernorm = None
        self.resize(config, layer_idx, cache_idx)

    def resize(self, config, layer_idx: int, cache_idx: int) -> None:
        """(Re)build the sub-blocks whose size in ``config`` differs from the current.

        Used at construction, and by the search to swap one block's level in place.
        """
        attention_cls, mlp_cls, norm_cls = self.blocks
        num_heads = config.layer_num_attention_heads[layer_idx]
        num_kv = config.layer_num_key_value_heads[layer_idx]
        width = config.layer_intermediate_size[layer_idx]
        if (num_heads, num_kv) != self.attention_size:
            self.self_attn = self.input_layernorm = None
            if num_heads:
                view = _LayerView(
                    config, num_attention_heads=num_heads, num_key_value_heads=num_kv
                )
                self.self_attn = attention_cls(view, cache_idx)
                self.self_attn.config = config  # live attn_implementation
                self.input_layernorm = norm_cls(
                    config.hidden_size, eps=config.rms_norm_eps
                )
        if width != self.mlp_width:
            self.mlp = self.post_attention_layernorm = None
            if width:
                self.mlp = mlp_cls(_LayerView(config, intermediate_size=width))
                self.post_attention_layernorm = norm_cls(
                    config.hidden_size, eps=config.rms_norm_eps
                )

    @property
    def attention_size(self) -> tuple[int, int]:
        """(query heads, KV heads) of the attention block; (0, 0) when removed."""
        if self.self_attn is None:
            return 0, 0
        head_dim = self.self_attn.head_dim
        return (
            self.self_attn.q_proj.out_features // head_dim,
            self.self_attn.k_proj.out_features // head_dim,
        )

    @property
    def mlp_width(self) -> int:
        return 0 if self.mlp is None else self.mlp.down_proj.in_features

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.self_attn is not None:
            attn_out, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = hidden_states + attn_out
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(
                self.post_attention_layernorm(hidden_states)
            )
        return hidden_states


def _build_layers(config, blocks) -> nn.ModuleList:
    layers, cache_idx = [], 0
    for i in range(config.num_hidden_layers):
        layers.append(DarwinLMDecoderLayer(config, i, cache_idx, blocks))
        cache_idx += config.layer_num_attention_heads[i] > 0
    return nn.ModuleList(layers)


def _init_base(model, config, blocks, rotary_cls) -> None:
    """What the parent ``Model.__init__`` does, with per-layer layers."""
    model.padding_idx = config.pad_token_id
    model.vocab_size = config.vocab_size
    model.embed_tokens = nn.Embedding(
        config.vocab_size, config.hidden_size, model.padding_idx
    )
    model.layers = _build_layers(config, blocks)
    model.norm = blocks[2](config.hidden_size, eps=config.rms_norm_eps)
    model.rotary_emb = rotary_cls(config=config)
    model.gradient_checkpointing = False


_LLAMA_BLOCKS = (llama.LlamaAttention, llama.LlamaMLP, llama.LlamaRMSNorm)
_QWEN2_BLOCKS = (qwen2.Qwen2Attention, qwen2.Qwen2MLP, qwen2.Qwen2RMSNorm)


class DarwinLMLlamaPreTrainedModel(llama.LlamaPreTrainedModel):
    config_class = DarwinLMLlamaConfig
    _no_split_modules = ["DarwinLMDecoderLayer"]
    _can_record_outputs = {
        "hidden_states": DarwinLMDecoderLayer,
        "attentions": llama.LlamaAttention,
    }


class DarwinLMLlamaModel(DarwinLMLlamaPreTrainedModel, llama.LlamaModel):
    def __init__(self, config: DarwinLMLlamaConfig):
        DarwinLMLlamaPreTrainedModel.__init__(self, config)
        _init_base(self, config, _LLAMA_BLOCKS, llama.LlamaRotaryEmbedding)
        self.post_init()


class DarwinLMLlamaForCausalLM(DarwinLMLlamaPreTrainedModel, llama.LlamaForCausalLM):
    def __init__(self, config: DarwinLMLlamaConfig):
        DarwinLMLlamaPreTrainedModel.__init__(self, config)
        self.model = DarwinLMLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class DarwinLMQwen2PreTrainedModel(qwen2.Qwen2PreTrainedModel):
    config_class = DarwinLMQwen2Config
    _no_split_modules = ["DarwinLMDecoderLayer"]
    _can_record_outputs = {
        "hidden_states": DarwinLMDecoderLayer,
        "attentions": qwen2.Qwen2Attention,
    }


class DarwinLMQwen2Model(DarwinLMQwen2PreTrainedModel, qwen2.Qwen2Model):
    def __init__(self, config: DarwinLMQwen2Config):
        DarwinLMQwen2PreTrainedModel.__init__(self, config)
        _init_base(self, config, _QWEN2_BLOCKS, qwen2.Qwen2RotaryEmbedding)
        self.has_sliding_layers = "sliding_attention" in config.layer_types
        self.post_init()


class DarwinLMQwen2ForCausalLM(DarwinLMQwen2PreTrainedModel, qwen2.Qwen2ForCausalLM):
    def __init__(self, config: DarwinLMQwen2Config):
        DarwinLMQwen2PreTrainedModel.__init__(self, config)
        self.model = DarwinLMQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = [
    "DarwinLMLlamaForCausalLM",
    "DarwinLMLlamaModel",
    "DarwinLMQwen2ForCausalLM",
    "DarwinLMQwen2Model",
]
