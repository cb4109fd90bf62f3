"""vLLM model classes for shrunk (non-uniform) DarwinLM checkpoints.

Only the decoder layer is new. vLLM's ``LlamaForCausalLM`` / ``LlamaModel`` take a
``layer_type`` (as vLLM's own GLM-4 does), so embeddings, ``@support_torch_compile``,
pipeline stages, the LM head, logits and the weight loading (``AutoWeightsLoader`` with
Llama's stacked mapping q/k/v -> qkv_proj, gate/up -> gate_up_proj) are vLLM's code.

:class:`DarwinLMDecoderLayer` builds vLLM's ``LlamaAttention`` and ``LlamaMLP`` with
this layer's sizes from ``layer_num_attention_heads``, ``layer_num_key_value_heads`` and
``layer_intermediate_size`` and leaves out a block (and its norm) whose size is 0; its
weights are then absent from both the model and the checkpoint. vLLM's v1 KV cache
takes its per-layer spec from each ``Attention`` module, so a different KV-head count
per layer and layers without attention need nothing else.

Qwen2 differs from Llama only in its biases (q/k/v biased, o_proj not), which
:mod:`darwin_modifier.families` decides; vLLM's ``Qwen2Attention`` could not be used
anyway, because it derives ``head_dim`` from ``hidden_size // num_heads``.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP
from vllm.model_executor.models.utils import extract_layer_index

from darwin_modifier.families import family_of

__all__ = [
    "DarwinLMDecoderLayer",
    "DarwinLMLlamaForCausalLM",
    "DarwinLMQwen2ForCausalLM",
]


class DarwinLMDecoderLayer(nn.Module):
    """A pre-norm decoder layer whose attention and MLP may each be absent.

    Follows vLLM's convention of passing ``(hidden_states, residual)`` between layers,
    the true residual stream being their sum, with the add fused into ``RMSNorm``.
    """

    def __init__(self, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        quant_config = vllm_config.quant_config
        family = family_of(config)
        i = extract_layer_index(prefix)
        num_heads = config.layer_num_attention_heads[i]
        width = config.layer_intermediate_size[i]

        self.self_attn = self.input_layernorm = None
        self.mlp = self.post_attention_layernorm = None
        if num_heads:
            # Reads head_dim, rope_parameters and layer_types from the shared config.
            self.self_attn = LlamaAttention(
                config=config,
                hidden_size=config.hidden_size,
                num_heads=num_heads,
                num_kv_heads=config.layer_num_key_value_heads[i],
                max_position_embeddings=config.max_position_embeddings,
                quant_config=quant_config,
                # Biases come from the family, exactly as shrink and transformers decide
                # them. A bias the checkpoint has and the model lacks would be dropped
                # silently: vLLM's AutoWeightsLoader ignores unexpected ".bias" weights.
                bias=family.qkv_bias(config),
                bias_o_proj=family.o_bias(config),
                cache_config=vllm_config.cache_config,
                prefix=f"{prefix}.self_attn",
            )
            self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if width:
            self.mlp = LlamaMLP(
                hidden_size=config.hidden_size,
                intermediate_size=width,
                hidden_act=config.hidden_act,
                quant_config=quant_config,
                bias=family.mlp_bias(config),
                prefix=f"{prefix}.mlp",
            )
            self.post_attention_layernorm = RMSNorm(
                config.hidden_size, eps=config.rms_norm_eps
            )

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.self_attn is not None:
            hidden_states, residual = _norm(
                self.input_layernorm, hidden_states, residual
            )
            hidden_states = self.self_attn(
                positions=positions, hidden_states=hidden_states
            )
        if self.mlp is not None:
            hidden_states, residual = _norm(
                self.post_attention_layernorm, hidden_states, residual
            )
            hidden_states = self.mlp(hidden_states)
        return hidden_states, residual


def _norm(
    norm: RMSNorm, hidden_states: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize the residual stream ``hidden_states + residual``; return it too."""
    if residual is None:  # the first block present in the model (a trace-time branch)
        return norm(hidden_states), hidden_states
    return norm(hidden_states, residual)


class DarwinLMLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama with per-layer sizes; architecture ``DarwinLMLlamaForCausalLM``."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(
            vllm_config=vllm_config, prefix=prefix, layer_type=DarwinLMDecoderLayer
        )


class DarwinLMQwen2ForCausalLM(DarwinLMLlamaForCausalLM):
    """The Qwen2 family (q/k/v biases, chosen by the config's family)."""
