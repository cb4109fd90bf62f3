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
from darwin_modifier.plan import DenseShape, LayerPlan, Plan, attention_layout

__all__ = [
    "block_state",
    "shrink",
    "shrink_state_dict",
    "shrunk_config",
]

# (layer index, "o_proj" | "down_proj") -> weight of the kept input columns, plan order
WeightOverrides = Mapping[tuple[int, str], torch.Tensor]

_DROPPED_CONFIG_KEYS = (
    "architectures",
    "auto_map",
    "model_type",
    "transformers_version",
)


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
    out = {k: v for k, v in dense_state.items() if not k.startswith("model.layers.")}
    for i, layer in enumerate(plan.layers):
        pre = f"model.layers.{i}."
        for kind in ("attn", "mlp"):
            block = block_state(dense_state, pre, layer, plan.shape, kind, overrides, i)
            out.update({pre + k: v for k, v in block.items()})
    return out


def block_state(
    dense_state: Mapping[str, torch.Tensor],
    prefix: str,
    layer: LayerPlan,
    shape: DenseShape,
    kind: str,
    overrides: WeightOverrides,
    index: int,
) -> dict[str, torch.Tensor]:
    """Weights of one sub-block (``"attn"`` or ``"mlp"``, with its norm),
    layer-relative.

    ``prefix`` names the dense layer (``model.layers.{i}.``); ``overrides`` may hold the
    OBS-updated o_proj / down_proj columns for ``(index, "o_proj" | "down_proj")``.
    """
    out: dict[str, torch.Tensor] = {}

    def take(name: str, rows: torch.Tensor | None = None) -> None:
        key = prefix + name
        if key in dense_state:
            tensor = dense_state[key]
            out[name] = (tensor if rows is None else tensor[rows]).contiguous()

    if kind == "attn" and layer.q_heads:
        q_order, kv_order = attention_layout(layer, shape)
        q_idx, kv_idx = _rows(q_order, shape.head_dim), _rows(kv_order, shape.head_dim)
        for proj, idx in (("q_proj", q_idx), ("k_proj", kv_idx), ("v_proj", kv_idx)):
            take(f"self_attn.{proj}.weight", idx)
            take(f"self_attn.{proj}.bias", idx)
        o_weight = overrides.get((index, "o_proj"))
        if o_weight is None:
            o_weight = dense_state[prefix + "self_attn.o_proj.weight"][:, q_idx]
        out["self_attn.o_proj.weight"] = o_weight.contiguous()
        take("self_attn.o_proj.bias")
        take("input_layernorm.weight")
    elif kind == "mlp" and layer.mlp_channels:
        idx = torch.tensor(layer.mlp_channels, dtype=torch.long)
        for proj in ("gate_proj", "up_proj"):
            take(f"mlp.{proj}.weight", idx)
            take(f"mlp.{proj}.bias", idx)
        d_weight = overrides.get((index, "down_proj"))
        if d_weight is None:
            d_weight = dense_state[prefix + "mlp.down_proj.weight"][:, idx]
        out["mlp.down_proj.weight"] = d_weight.contiguous()
        take("mlp.down_proj.bias")
        take("post_attention_layernorm.weight")
    return out


def shrink(
    model: nn.Module, plan: Plan, overrides: WeightOverrides | None = None
) -> nn.Module:
    """A new, physically smaller model with the masked dense model's function."""
    config = shrunk_config(model.config, plan)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        small = MODEL_CLASSES[config.model_type](config).to(dtype)
    dense_state = model.state_dict()
    state = shrink_state_dict(dense_state, plan, overrides)
    # Unsliced tensors (embeddings, norms) still alias the dense model: copy them, so
    # training one model never changes the other.
    dense_storages = {t.untyped_storage().data_ptr() for t in dense_state.values()}
    device = next(model.parameters()).device
    state = {
        k: (v.clone() if v.untyped_storage().data_ptr() in dense_storages else v).to(
            device, dtype if v.is_floating_point() else v.dtype
        )
        for k, v in state.items()
    }
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
    with torch.device(device):
        small.model.rotary_emb = type(small.model.rotary_emb)(config=config)
    small.generation_config = model.generation_config
    return small.eval() if not model.training else small
