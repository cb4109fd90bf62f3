"""The contract every stage shares: which heads and channels each decoder layer keeps.

A plan names kept *dense* indices. Key/value heads are not listed: they follow from the
kept query heads (a KV head stays exactly when some kept query head reads it), so a plan
cannot be inconsistent about GQA. Whether the kept query heads are balanced across KV
groups decides the physical layout (see :func:`attention_layout`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["DenseShape", "LayerPlan", "Plan", "attention_layout"]


@dataclass(frozen=True)
class DenseShape:
    """The sizes of the dense parent that a plan indexes into."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )

    @property
    def group_size(self) -> int:
        """Query heads that share one KV head in the dense model."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_config(cls, config) -> DenseShape:
        from darwin_modifier.families import family_of

        family = family_of(config)
        num_heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=getattr(config, "head_dim", None)
            or config.hidden_size // num_heads,
            intermediate_size=config.intermediate_size,
            qkv_bias=family.qkv_bias(config),
            o_bias=family.o_bias(config),
            mlp_bias=family.mlp_bias(config),
        )


@dataclass(frozen=True)
class LayerPlan:
    """Kept dense query heads and MLP channels of one layer; empty = block removed."""

    q_heads: tuple[int, ...] = field(default_factory=tuple)
    mlp_channels: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "q_heads", tuple(sorted(int(h) for h in self.q_heads)))
        object.__setattr__(
            self, "mlp_channels", tuple(sorted(int(c) for c in self.mlp_channels))
        )

    @property
    def has_attention(self) -> bool:
        return bool(self.q_heads)

    @property
    def has_mlp(self) -> bool:
        return bool(self.mlp_channels)

    def kv_heads(self, shape: DenseShape) -> tuple[int, ...]:
        """Dense KV heads that some kept query head reads."""
        return tuple(sorted({h // shape.group_size for h in self.q_heads}))


def attention_layout(
    layer: LayerPlan, shape: DenseShape
) -> tuple[list[int], list[int]]:
    """Physical order of query heads and the dense KV head stored in each KV slot.

    Stock kernels (HF sdpa, vLLM) need every KV slot to serve the same number of query
    heads. Query heads are grouped by their KV head; with ``c_g`` kept queries in group
    ``g`` and ``m = gcd(c_g)``, group ``g`` gets ``c_g / m`` copies of its KV head. A
    balanced plan therefore stores every KV head once (no cost); an unbalanced one (the
    paper's query-only removal on GQA models) pays with repeated KV heads in the cache.
    """
    by_group: dict[int, list[int]] = {}
    for head in layer.q_heads:
        by_group.setdefault(head // shape.group_size, []).append(head)
    if not by_group:
        return [], []
    per_slot = math.gcd(*(len(heads) for heads in by_group.values()))
    q_order = [h for g in sorted(by_group) for h in by_group[g]]
    kv_order = [
        g for g in sorted(by_group) for _ in range(len(by_group[g]) // per_slot)
    ]
    return q_order, kv_order


@dataclass(frozen=True)
class Plan:
    """One :class:`LayerPlan` per decoder layer of a dense model of ``shape``."""

    shape: DenseShape
    layers: tuple[LayerPlan, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        self.validate()

    def validate(self) -> None:
        """Fail early, naming the layer, on anything shrink could not build."""
        s = self.shape
        if len(self.layers) != s.num_layers:
            raise ValueError(
                f"plan has {len(self.layers)} layers but the model has {s.num_layers}"
            )
        for i, layer in enumerate(self.layers):
            _check_indices(layer.q_heads, s.num_heads, f"layer {i} query head")
            _check_indices(
                layer.mlp_channels, s.intermediate_size, f"layer {i} MLP channel"
            )
        if not any(layer.has_attention or layer.has_mlp for layer in self.layers):
            raise ValueError(
                "plan removes every attention and MLP block: the model would be empty"
            )

    @classmethod
    def dense(cls, shape: DenseShape) -> Plan:
        """The plan that keeps everything (shrink is then the identity)."""
        full = LayerPlan(
            tuple(range(shape.num_heads)), tuple(range(shape.intermediate_size))
        )
        return cls(shape, (full,) * shape.num_layers)

    # ---- physical sizes -------------------------------------------------------------

    def layer_sizes(self) -> list[tuple[int, int, int]]:
        """Per layer: stored (query heads, KV heads, MLP width)."""
        sizes = []
        for layer in self.layers:
            q_order, kv_order = attention_layout(layer, self.shape)
            sizes.append((len(q_order), len(kv_order), len(layer.mlp_channels)))
        return sizes

    def attention_params(self, num_q: int, num_kv: int) -> int:
        """Parameters of one attention block (with its norm) of the given size."""
        s = self.shape
        if num_q == 0:
            return 0
        q, kv = num_q * s.head_dim, num_kv * s.head_dim
        params = s.hidden_size * (q + 2 * kv) + q * s.hidden_size + s.hidden_size
        params += (q + 2 * kv) * s.qkv_bias + s.hidden_size * s.o_bias
        return params

    def mlp_params(self, width: int) -> int:
        """Parameters of one MLP block (with its norm) of the given width."""
        s = self.shape
        if width == 0:
            return 0
        return (
            3 * s.hidden_size * width
            + s.hidden_size
            + (2 * width + s.hidden_size) * s.mlp_bias
        )

    def block_params(self) -> int:
        """Decoder-block parameters of the shrunk model (embeddings and head
        excluded)."""
        return sum(
            self.attention_params(q, kv) + self.mlp_params(w)
            for q, kv, w in self.layer_sizes()
        )

    def kept_fraction(self) -> float:
        """Decoder-block parameters kept, relative to the dense model."""
        return self.block_params() / Plan.dense(self.shape).block_params()

    # ---- JSON -----------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "shape": asdict(self.shape),
            "layers": [
                {
                    "q_heads": list(layer.q_heads),
                    "kv_heads": list(layer.kv_heads(self.shape)),
                    "mlp_channels": list(layer.mlp_channels),
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        shape = DenseShape(**data["shape"])
        layers = []
        for i, entry in enumerate(data["layers"]):
            layer = LayerPlan(tuple(entry["q_heads"]), tuple(entry["mlp_channels"]))
            listed = entry.get("kv_heads")
            if listed is not None and tuple(sorted(listed)) != layer.kv_heads(shape):
                raise ValueError(
                    f"layer {i}: kv_heads {sorted(listed)} do not match the KV heads "
                    f"{list(layer.kv_heads(shape))} that its query heads read; drop "
                    "'kv_heads' to derive them"
                )
            layers.append(layer)
        return cls(shape, tuple(layers))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_indices(indices: tuple[int, ...], limit: int, what: str) -> None:
    if len(set(indices)) != len(indices):
        raise ValueError(f"{what} indices repeat: {list(indices)}")
    bad = [i for i in indices if not 0 <= i < limit]
    if bad:
        raise ValueError(f"{what} index {bad[0]} is out of range [0, {limit})")
