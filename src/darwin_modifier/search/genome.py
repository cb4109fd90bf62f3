"""Genomes: one database level per pruned module.

A genome picks a level for every attention block and every MLP block. Level 0 is dense,
the last level removes the block; ``params[module][layer][level]`` is the physical
parameter count the database measured for it (non-increasing in level). The budget
(:mod:`darwin_modifier.search.budget`) and the mutation
(:mod:`darwin_modifier.search.mutation`) work on these values.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MODULES = ("attn", "mlp")

ParamsTable = Mapping[str, Sequence[Sequence[int]]]
"""``table[module][layer][level]``: physical parameters of that block at that level."""


@dataclass(frozen=True)
class Genome:
    """One level per attention block and per MLP block; hashable and JSON-able."""

    attn: tuple[int, ...]
    mlp: tuple[int, ...]

    def __post_init__(self) -> None:
        for module in MODULES:
            try:
                levels = tuple(operator.index(x) for x in getattr(self, module))
            except TypeError as err:
                raise TypeError(f"{module} levels must be integers: {err}") from None
            if any(level < 0 for level in levels):
                raise ValueError(f"{module} levels must be >= 0, got {levels}")
            object.__setattr__(self, module, levels)
        if len(self.attn) != len(self.mlp):
            raise ValueError(
                f"need one attention and one MLP level per layer, got {len(self.attn)} "
                f"and {len(self.mlp)}"
            )

    @property
    def num_layers(self) -> int:
        return len(self.attn)

    def levels(self, module: str) -> tuple[int, ...]:
        if module not in MODULES:
            raise ValueError(f"unknown module {module!r}; choose one of {MODULES}")
        return getattr(self, module)

    def with_level(self, module: str, layer: int, level: int) -> Genome:
        """A copy with one module's level changed."""
        levels = list(self.levels(module))
        levels[layer] = level
        return Genome(**{**self.to_dict(), module: levels})

    def changed(self, other: Genome) -> list[tuple[str, int]]:
        """``(module, layer)`` pairs whose level differs: only those need reloading."""
        if other.num_layers != self.num_layers:
            raise ValueError("genomes have different numbers of layers")
        return [
            (module, i)
            for module in MODULES
            for i, (a, b) in enumerate(zip(self.levels(module), other.levels(module)))
            if a != b
        ]

    def to_dict(self) -> dict[str, list[int]]:
        return {module: list(self.levels(module)) for module in MODULES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[int]]) -> Genome:
        missing = [m for m in MODULES if m not in data]
        if missing:
            raise ValueError(f"genome dict lacks {missing}")
        return cls(**{module: tuple(data[module]) for module in MODULES})


def uniform(level: int, num_layers: int) -> Genome:
    """Every module at ``level``: the paper's first parent and the uniform baseline."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return Genome((level,) * num_layers, (level,) * num_layers)
