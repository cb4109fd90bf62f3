"""What differs between the supported model families: one place to add a family.

Both families share module names (``model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``); they differ in which projections carry a bias and in the
name of the shrunk checkpoint's architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "FAMILIES", "family_of"]


@dataclass(frozen=True)
class Family:
    name: str  # parent model_type whose transformers blocks we reuse
    parent_types: tuple[str, ...]  # dense model_types that map onto this family
    model_type: str  # model_type of the shrunk checkpoint
    architecture: str  # architectures[0] of the shrunk checkpoint
    fixed_qkv_bias: bool | None  # None: read ``attention_bias`` from the config

    def qkv_bias(self, config) -> bool:
        if self.fixed_qkv_bias is not None:
            return self.fixed_qkv_bias
        return bool(getattr(config, "attention_bias", False))

    def o_bias(self, config) -> bool:
        # Llama's ``attention_bias`` covers o_proj too; Qwen2 never biases o_proj.
        return self.fixed_qkv_bias is None and bool(
            getattr(config, "attention_bias", False)
        )

    def mlp_bias(self, config) -> bool:
        return bool(getattr(config, "mlp_bias", False))


FAMILIES = (
    Family(
        name="llama",
        parent_types=("llama", "mistral", "darwinlm_llama"),
        model_type="darwinlm_llama",
        architecture="DarwinLMLlamaForCausalLM",
        fixed_qkv_bias=None,
    ),
    Family(
        name="qwen2",
        parent_types=("qwen2", "darwinlm_qwen2"),
        model_type="darwinlm_qwen2",
        architecture="DarwinLMQwen2ForCausalLM",
        fixed_qkv_bias=True,
    ),
)


def family_of(config) -> Family:
    """The family of a dense (or already shrunk) config; a clear error otherwise."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.parent_types:
            if getattr(config, "sliding_window", None) and getattr(
                config, "use_sliding_window", model_type == "mistral"
            ):
                raise ValueError(
                    f"{model_type} with sliding-window attention is not supported; "
                    "set sliding_window=None if the model does not need it"
                )
            return family
    supported = sorted(t for f in FAMILIES for t in f.parent_types if "darwin" not in t)
    raise ValueError(
        f"unsupported architecture model_type={model_type!r}; darwin-modifier supports "
        f"{supported} (Llama-2/3.x, SmolLM2, Mistral, Qwen2/2.5)"
    )
