"""Group quantization after DarwinLM: widths that the quantizer can take.

Group quantization (W4A16: groups of 128 input columns) needs every quantized layer's
input width to be a multiple of the group size. DarwinLM chooses the input widths of
``o_proj`` (kept heads x head_dim) and ``down_proj`` (kept MLP channels), so
:func:`check_quantization_alignment` refuses, before any work, ladders whose widths
would not fit a group-quantizing stage that follows, and says which setting to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llmcompressor.modifiers import Modifier
from torch import nn

from darwin_modifier.database.config import DatabaseConfig
from darwin_modifier.database.ladder import parameter_ladder
from darwin_modifier.database.units import heads_per_unit
from darwin_modifier.plan import DenseShape

__all__ = ["check_quantization_alignment"]

_GROUPED = ("group", "tensor_group")  # strategies whose groups run along input columns


def _module_names(shape: DenseShape) -> dict[str, list[str]]:
    """Dense module names by the width that sets their input columns."""
    names: dict[str, list[str]] = {"attn": [], "mlp": [], "hidden": []}
    for i in range(shape.num_layers):
        pre = f"model.layers.{i}."
        names["attn"].append(pre + "self_attn.o_proj")
        names["mlp"].append(pre + "mlp.down_proj")
        names["hidden"] += [pre + f"self_attn.{p}_proj" for p in "qkv"]
        names["hidden"] += [pre + f"mlp.{p}_proj" for p in ("gate", "up")]
    return names


def _group_rules(quantizer) -> list[tuple[int, Any]]:
    """(group size, scheme) of each of a quantizer's schemes with grouped weights."""
    rules = []
    for scheme in quantizer.resolved_config.config_groups.values():
        weights = scheme.weights
        if weights is None or weights.group_size is None:
            continue
        if str(getattr(weights.strategy, "value", weights.strategy)) not in _GROUPED:
            continue
        rules.append((int(weights.group_size), scheme))
    return rules


def _quantized(names: list[str], quantizer, scheme) -> list[str]:
    """The names among ``names`` that the scheme quantizes (targets minus ignore)."""
    from compressed_tensors.utils import is_match

    probe = nn.Linear(1, 1, device="meta")  # class-name targets such as "Linear"
    ignore = list(quantizer.ignore or [])
    return [n for n in names if is_match(n, probe, scheme.targets, ignore)]


def _power_of_two_dividing(width: int, limit: int) -> int:
    g = 1
    while g * 2 <= limit and width % (g * 2) == 0:
        g *= 2
    return g


def check_quantization_alignment(
    darwin: DatabaseConfig, quantizers: Sequence[Modifier], config
) -> None:
    """Refuse DarwinLM widths that a following group-quantizing stage cannot take.

    ``darwin`` is DarwinLM's database settings (the modifier itself), ``config`` the
    dense model's config. Every width DarwinLM may produce (each
    non-zero level of the attention and MLP ladders) becomes the input width of
    ``o_proj`` / ``down_proj``; where a following quantizer applies a ``group`` or
    ``tensor_group`` weight scheme to those modules, the width must be a multiple of
    the group size (what LLM Compressor checks at the quantization stage's start, and
    what vLLM's kernels need). The dense ``hidden_size`` (input of q/k/v/gate/up) is
    checked too: a misfit there would only surface after the whole DarwinLM stage.
    """
    shape = DenseShape.from_config(config)
    ladders = darwin.ladders(shape)
    unit = heads_per_unit(shape, darwin.gqa_mode) * shape.head_dim  # o_proj columns
    widths = {
        "attn": sorted({c * unit for c in ladders["attn"] if c}, reverse=True),
        "mlp": sorted({c for c in ladders["mlp"] if c}, reverse=True),
        "hidden": [shape.hidden_size],
    }
    names = _module_names(shape)
    problems = []
    for quantizer in quantizers:
        if getattr(quantizer, "bypass_divisibility_checks", False):
            continue
        kind_name = type(quantizer).__name__
        for group, scheme in _group_rules(quantizer):
            for kind in ("mlp", "attn", "hidden"):
                bad = [w for w in widths[kind] if w % group]
                quantized = _quantized(names[kind], quantizer, scheme) if bad else []
                if quantized:
                    problems.append(
                        _explain(kind, bad, group, darwin, shape, ladders, kind_name)
                    )
    if problems:
        raise ValueError(
            "DarwinLM widths do not fit the quantization stage that follows "
            "(group quantization needs input widths that are multiples of the group "
            "size):\n- " + "\n- ".join(dict.fromkeys(problems))
        )


def _explain(kind, bad, group, darwin, shape, ladders, quantizer_name) -> str:
    head = f"{quantizer_name} (group_size {group})"
    if kind == "hidden":
        return (
            f"{head}: the dense hidden_size {shape.hidden_size} (input of q/k/v/gate/up"
            f"_proj) is not a multiple of {group}; no DarwinLM setting changes it. "
            f"Use a group size dividing it (e.g. "
            f"{_power_of_two_dividing(shape.hidden_size, group)}) or ignore those "
            "layers"
        )
    if kind == "mlp":
        dense = shape.intermediate_size
        where = f"{head}: MLP widths {bad} (down_proj inputs) are not multiples of "
        where += str(group)
        if dense % group:
            return (
                f"{where}; the dense intermediate_size {dense} is not either, so no "
                f"ladder fixes it: add 're:.*down_proj$' to the quantization ignore "
                f"list or use a group size dividing {dense} (e.g. "
                f"{_power_of_two_dividing(dense, group)})"
            )
        if darwin.mlp_ladder is not None:
            return f"{where}; give an mlp_ladder whose counts are multiples of {group}"
        multiple = math.lcm(darwin.mlp_multiple, group)
        return f"{where}: set mlp_multiple: {multiple}"
    # attention: o_proj input = kept query heads x head_dim
    per_unit = heads_per_unit(shape, darwin.gqa_mode)
    unit = per_unit * shape.head_dim
    what = "KV groups" if per_unit > 1 else "heads"
    step = group // math.gcd(unit, group)  # counts must be multiples of this
    units = ladders["attn"][0]
    where = (
        f"{head}: attention widths {bad} (o_proj inputs: kept {what} x {unit}) are "
        f"not multiples of {group}"
    )
    if (units * unit) % group:
        return (
            f"{where}; the dense width {units * unit} is not either, so no "
            f"attention ladder fixes it: add 're:.*o_proj$' to the quantization "
            f"ignore list or use a group size dividing {unit} (e.g. "
            f"{_power_of_two_dividing(unit, group)})"
        )
    hint = ""
    if step <= units:
        suggestion = parameter_ladder(units, darwin.num_levels, step)
        hint = f", e.g. attn_ladder: {suggestion}"
    if darwin.gqa_mode == "query" and shape.group_size > 1:
        kv_unit = shape.group_size * shape.head_dim
        if kv_unit % group == 0:
            return f"{where}: set gqa_mode: kv_group (units of {kv_unit} columns)"
    return (
        f"{where}: give an attn_ladder whose counts ({what}) are multiples of "
        f"{step}{hint}"
    )
