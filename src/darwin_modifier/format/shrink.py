"""Dense model + Plan (+ database weights) -> the physically smaller model.

Rows of q/k/v/gate/up and columns of o/down are sliced by the plan; the OBS-updated
o_proj / down_proj columns from the database replace the sliced ones when given. The
result is built on the meta device and filled by assignment, so the dense and shrunk
weights never coexist beyond one tensor's slice.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from darwin_modifier.families import family_of
from darwin_modifier.format import CONFIG_CLASSES, MODEL_CLASSES
from darwin_modifier.plan import DenseShape, Plan, attention_layout

__all__ = ["shrunk_config", "shrink", "shrink_state_dict", "dense_plan_of"]

# (layer index, "o_proj" | "down_proj") -> weight of the kept input columns, plan order
WeightOverrides = Mapping[tuple[int, str], torch.Tensor]

_DROPPED_CONFIG_KEYS = (
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
)


def dense_plan_of(config) -> Plan:
    """The identity plan for a dense config."""
    return Plan.dense(DenseShape.from_config(config))


def shrunk_config(dense_config, plan: Plan):
    """The shrunk checkpoint's config: dense globals plus the plan's per-layer sizes."""
    family = family_of(dense_config)
    values = {
        k: v for k, v in dense_config.to_dict().items() if k not in _DROPPED_CONFIG_KEYS
    }
    sizes = plan.layer_sizes()
    values.update(
        head_dim=plan.shape.head_dim,
        layer_num_attention_heads=[q for q, _, _ in sizes],
        layer_num_key_value_heads=[kv for _, kv, _ in sizes],
        layer_intermediate_size=[w for _, _, w in sizes],
        architectures=[family.architecture],
    )
    return CONFIG_CLASSES[family.model_type](**values)


def _rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor(
        [h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long
    )


def shrink_state_dict(
    dense_state: Mapping[str, torch.Tensor],
    plan: Plan,
    overrides: WeightOverrides | None = None,
) -> dict[str, torch.Tensor]:
    """The shrunk model's state dict, sliced from a dense (HF-named) state dict."""
    overrides = overrides or {}
    hd = plan.shape.head_dim
    out: dict[str, torch.Tensor] = {}
    for name, tensor in dense_state.items():
        if not name.startswith("model.layers."):
            out[name] = tensor
    for i, layer in enumerate(plan.layers):
        pre = f"model.layers.{i}."
        q_order, kv_order = attention_layout(layer, plan.shape)
        if q_order:
            q_idx, kv_idx = _rows(q_order, hd), _rows(kv_order, hd)
            for proj, idx in (
                ("q_proj", q_idx),
                ("k_proj", kv_idx),
                ("v_proj", kv_idx),
            ):
                for kind in ("weight", "bias"):
                    key = f"{pre}self_attn.{proj}.{kind}"
                    if key in dense_state:
                        out[key] = dense_state[key][idx]
            o_key = f"{pre}self_attn.o_proj.weight"
            out[o_key] = overrides.get((i, "o_proj"), dense_state[o_key][:, q_idx])
            _copy(dense_state, out, f"{pre}self_attn.o_proj.bias")
            _copy(dense_state, out, f"{pre}input_layernorm.weight")
        if layer.mlp_channels:
            idx = torch.tensor(layer.mlp_channels, dtype=torch.long)
            for proj in ("gate_proj", "up_proj"):
                out[f"{pre}mlp.{proj}.weight"] = dense_state[f"{pre}mlp.{proj}.weight"][
                    idx
                ]
                key = f"{pre}mlp.{proj}.bias"
                if key in dense_state:
                    out[key] = dense_state[key][idx]
            d_key = f"{pre}mlp.down_proj.weight"
            out[d_key] = overrides.get((i, "down_proj"), dense_state[d_key][:, idx])
            _copy(dense_state, out, f"{pre}mlp.down_proj.bias")
            _copy(dense_state, out, f"{pre}post_attention_layernorm.weight")
    return {k: v.contiguous() for k, v in out.items()}


def _copy(src: Mapping[str, torch.Tensor], dst: dict, key: str) -> None:
    if key in src:
        dst[key] = src[key]


def shrink(
    model: nn.Module, plan: Plan, overrides: WeightOverrides | None = None
) -> nn.Module:
    """A new, physically smaller model with the masked dense model's function."""
    config = shrunk_config(model.config, plan)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        small = MODEL_CLASSES[config.model_type](config).to(dtype)
    state = shrink_state_dict(model.state_dict(), plan, overrides)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = small.load_state_dict(state, strict=False, assign=True)
    missing = [
        k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")
    ]
    if missing or unexpected:
        raise RuntimeError(
            f"shrink produced a bad state dict: {missing=} {unexpected=}"
        )
    if config.tie_word_embeddings:
        small.tie_weights()
    # Buffers (rotary inverse frequencies) are not in the state dict: recompute them.
    with torch.device(next(model.parameters()).device):
        small.model.rotary_emb = type(small.model.rotary_emb)(config=config)
    small.generation_config = model.generation_config
    return small.eval() if not model.training else small
