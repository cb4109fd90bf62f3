"""DarwinLM followed by quantization: one recipe, run stage by stage.

LLM Compressor 0.14 flattens every ``*_stage`` of a recipe into one list of modifiers
and runs them in *one* lifecycle: all are initialized on the dense model before any
calibration (``QuantizationModifier`` / ``GPTQModifier`` attach their schemes to the
dense ``Linear`` modules there), each calibrates in turn, and all finalize at the end.
DarwinLM shrinks the model in ``on_finalize``, after the quantization modifiers have
calibrated the dense shapes, and its new ``Linear`` modules carry no scheme at all. So a
quantization stage must run in its own ``oneshot`` after DarwinLM's has finished, which
is what ``oneshot(stage=...)`` is for; :func:`oneshot_stages` does that for a whole
recipe and handles what plain ``stage=`` chaining trips over after a shrink (the shrunk
model's ``_name_or_path`` is empty so that the save keeps its true config, and the next
``oneshot`` reads ``config.json`` from it).

Widths: group quantization (W4A16: groups of 128 input columns) needs every quantized
layer's input width to be a multiple of the group size. DarwinLM chooses the input
widths of ``o_proj`` (kept heads x head_dim) and ``down_proj`` (kept MLP channels), so
:func:`check_quantization_alignment` refuses, before any work, ladders whose widths
would not fit a group-quantizing stage that follows, and says which setting to change.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from llmcompressor.modifiers import Modifier
from llmcompressor.recipe import Recipe
from torch import nn

from darwin_modifier.database.ladder import parameter_ladder
from darwin_modifier.database.prune import LadderSpec, heads_per_unit
from darwin_modifier.modifier.base import DarwinLMModifier
from darwin_modifier.plan import DenseShape

__all__ = [
    "check_quantization_alignment",
    "check_stages",
    "oneshot_stages",
    "refuse_quantization_in_same_pass",
    "run_oneshot_stages",
    "split_stages",
]

_GROUPED = ("group", "tensor_group")  # strategies whose groups run along input columns


# ---- recipes -> stages ------------------------------------------------------------


def split_stages(recipe) -> list[Recipe]:
    """One :class:`Recipe` per stage, in order.

    ``recipe`` is a YAML/JSON file or string, or a dict, with ``<name>_stage`` sections
    (each becomes a stage; a recipe without stage sections is one stage), or a sequence
    whose items are the stages (a modifier, a list of modifiers, a recipe, YAML...).
    """
    if isinstance(recipe, Recipe | Modifier):
        return [Recipe.create_instance(recipe)]
    if isinstance(recipe, Sequence) and not isinstance(recipe, str):
        return [Recipe.create_instance(stage) for stage in recipe]
    if isinstance(recipe, str | os.PathLike):
        if os.path.isfile(recipe):
            content = Path(recipe).read_text()
        else:
            content = str(recipe)
        recipe = yaml.safe_load(content)  # YAML is a superset of JSON
    if not isinstance(recipe, dict):
        raise ValueError(f"cannot read a recipe from {type(recipe).__name__}")
    args = recipe.get("args", {})
    stages = [
        Recipe.from_dict({"args": args, key: value})
        for key, value in recipe.items()
        if key.endswith("_stage") and isinstance(value, dict)
    ]
    return stages or [Recipe.from_dict(recipe)]


def _quantizers(modifiers: Iterable[Modifier]) -> list[Modifier]:
    from llmcompressor.modifiers.quantization import QuantizationMixin

    return [m for m in modifiers if isinstance(m, QuantizationMixin)]


def _darwins(modifiers: Iterable[Modifier]) -> list[DarwinLMModifier]:
    return [m for m in modifiers if isinstance(m, DarwinLMModifier) and m.shrink]


# ---- width alignment --------------------------------------------------------------


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
    darwin: DarwinLMModifier, quantizers: Sequence[Modifier], config
) -> None:
    """Refuse DarwinLM widths that a following group-quantizing stage cannot take.

    ``config`` is the dense model's config. Every width DarwinLM may produce (each
    non-zero level of the attention and MLP ladders) becomes the input width of
    ``o_proj`` / ``down_proj``; where a following quantizer applies a ``group`` or
    ``tensor_group`` weight scheme to those modules, the width must be a multiple of
    the group size (what LLM Compressor checks at the quantization stage's start, and
    what vLLM's kernels need). The dense ``hidden_size`` (input of q/k/v/gate/up) is
    checked too: a misfit there would only surface after the whole DarwinLM stage.
    """
    shape = DenseShape.from_config(config)
    spec = LadderSpec(
        num_levels=darwin.num_levels,
        mlp_multiple=darwin.mlp_multiple,
        attn_counts=darwin.attn_ladder,
        mlp_counts=darwin.mlp_ladder,
    )
    ladders = spec.ladders(shape, darwin.gqa_mode)
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


def check_stages(stages: Sequence[Recipe], config) -> None:
    """Before any work: every stage's order, and DarwinLM's widths against the
    quantization after it."""
    for i, stage in enumerate(stages):
        if _reshapers(stage.modifiers) and _quantizers(stage.modifiers):
            raise ValueError(_same_pass_message(stage.modifiers))
        check_training_order(stage.modifiers)
        earlier = [q for s in stages[:i] for q in _quantizers(s.modifiers)]
        for trainer in _trainers(stage.modifiers):
            trainer.check_teacher()
            if earlier:
                raise ValueError(
                    f"stage {stage.stage!r} trains after the quantization of an "
                    f"earlier stage ({type(earlier[0]).__name__}): quantized weights "
                    "take no useful gradient and their scales would go stale. Put "
                    "the training stage before the quantization stage."
                )
        later = [q for s in stages[i + 1 :] for q in _quantizers(s.modifiers)]
        for darwin in _darwins(stage.modifiers):
            check_quantization_alignment(darwin, later, config)


def check_training_order(modifiers: Sequence[Modifier]) -> None:
    """In one pass, modifiers finalize in recipe order: training must come after
    DarwinLM, or the search would run on weights the database does not describe."""
    trainers, darwins = _trainers(modifiers), _darwins(modifiers)
    if trainers and darwins:
        position = {id(m): k for k, m in enumerate(modifiers)}
        if position[id(trainers[0])] < position[id(darwins[-1])]:
            raise ValueError(
                "DarwinLMTrainingModifier is listed before DarwinLMModifier in the "
                "same stage; list it after, so that it trains the shrunk model"
            )


def _trainers(modifiers: Iterable[Modifier]) -> list[Modifier]:
    from darwin_modifier.modifier.posttrain import DarwinLMTrainingModifier

    return [m for m in modifiers if isinstance(m, DarwinLMTrainingModifier)]


def _reshapers(modifiers: Iterable[Modifier]) -> list[Modifier]:
    """Modifiers that change the weights at finalize: DarwinLM (shape) and training."""
    modifiers = list(modifiers)
    return _darwins(modifiers) + _trainers(modifiers)


def _same_pass_message(modifiers) -> str:
    names = [type(m).__name__ for m in _quantizers(modifiers)]
    ours = sorted({type(m).__name__ for m in _reshapers(modifiers)})
    verb = "changes" if len(ours) == 1 else "change"
    return (
        f"{' and '.join(ours)} and {names} are in the same oneshot pass: every "
        "modifier is initialized and calibrated before any finalizes, and "
        f"{' and '.join(ours)} {verb} the weights (DarwinLM their shapes) at "
        "finalize, so the quantization would calibrate weights that no longer exist. "
        "Put the quantization in a later *_stage and run the recipe stage by stage "
        "(darwin_modifier.modifier.chain.oneshot_stages, or oneshot(stage=...) once "
        "per stage)."
    )


def refuse_quantization_in_same_pass(modifier: Modifier) -> None:
    """For ``on_initialize`` of our modifiers: refuse a quantizer in the same lifecycle.

    The session's recipe holds exactly the modifiers of this ``oneshot`` call (a
    ``stage=`` call holds only that stage's), so stage-by-stage runs pass.
    """
    if not getattr(modifier, "shrink", True):
        return  # a DarwinLM run that only builds the database changes no weights
    from llmcompressor.core import active_session

    modifiers = active_session().lifecycle.recipe.modifiers or []
    if _quantizers(modifiers):
        raise ValueError(_same_pass_message([modifier, *modifiers]))


# ---- running --------------------------------------------------------------------


def oneshot_stages(
    model,
    recipe,
    output_dir: str | os.PathLike | None = None,
    save_stages: bool = False,
    **oneshot_kwargs: Any,
):
    """Run ``recipe`` one stage per ``oneshot`` call; returns the final model.

    Each stage sees the model as the previous stage left it (so a quantization stage
    after DarwinLM calibrates and quantizes the shrunk shapes). Settings are checked
    for every stage before the first one starts. ``oneshot_kwargs`` (dataset,
    ``num_calibration_samples``, ``max_seq_length``, ...) go to every stage. The last
    stage saves to ``output_dir`` (``save_compressed`` as given); with ``save_stages``
    every earlier stage also saves to ``output_dir/<stage name>``, as
    ``oneshot(stage=...)`` does. The saved ``recipe.yaml`` lists all stages.
    """
    from llmcompressor.entrypoints.oneshot import Oneshot
    from llmcompressor.transformers.utils.helpers import infer_recipe_from_model_path
    from transformers import AutoConfig

    if oneshot_kwargs.get("stage") is not None:
        raise ValueError("oneshot_stages runs every stage; do not pass stage=")
    stages = split_stages(recipe)
    if isinstance(model, str | os.PathLike):
        config = AutoConfig.from_pretrained(
            model,
            trust_remote_code=oneshot_kwargs.get("trust_remote_code_model", False),
        )
        source_recipe = infer_recipe_from_model_path(str(model))
    else:
        config = model.config
        source_recipe = infer_recipe_from_model_path(config._name_or_path or "")
    check_stages(stages, config)

    kwargs = dict(oneshot_kwargs)
    with tempfile.TemporaryDirectory(prefix="darwinlm-stages-") as bridge:
        for i, stage in enumerate(stages):
            last = i == len(stages) - 1
            stage_dir = None
            if last:
                stage_dir = output_dir
            elif save_stages and output_dir is not None:
                stage_dir = os.path.join(output_dir, stage.stage)
            if not isinstance(model, str | os.PathLike):
                _point_at_true_config(
                    model, os.path.join(bridge, str(i)), kwargs.get("processor")
                )
            run = Oneshot(
                model=model,
                recipe=stage,
                output_dir=None if stage_dir is None else str(stage_dir),
                **kwargs,
            )
            run()
            model = run.model
            # later stages reuse the processor the first one loaded
            kwargs.pop("tokenizer", None)
            kwargs["processor"] = run.processor
            if stage_dir is not None:
                model.config._name_or_path = str(stage_dir)
                _write_recipe_history(
                    stages[: i + 1], source_recipe, Path(stage_dir) / "recipe.yaml"
                )
        if output_dir is None and model.config._name_or_path.startswith(bridge):
            model.config._name_or_path = ""
    return model


def run_oneshot_stages(
    model: str | os.PathLike,
    recipe,
    output_dir: str | os.PathLike | None = None,
    dataset="python-docs",
    num_samples: int = 64,
    seq_len: int = 512,
    seed: int = 0,
    text_column: str = "text",
    save_stages: bool = False,
):
    """:func:`~darwin_modifier.modifier.entry.run_oneshot`, stage by stage.

    Same calibration windows for every stage (whole windows of real text), e.g.
    ``run_oneshot_stages(fetch_default_model(), "recipes/smollm2_cpu_w8a8.yaml",
    "results/demo_w8a8/model")``.
    """
    from transformers import AutoTokenizer

    import darwin_modifier  # noqa: F401  (DarwinLMModifier for YAML recipes)
    from darwin_modifier.modifier.entry import calibration_dataset

    tokenizer = AutoTokenizer.from_pretrained(model)
    data = calibration_dataset(
        tokenizer, dataset, num_samples, seq_len, seed, text_column
    )
    return oneshot_stages(
        str(model),
        recipe,
        output_dir=output_dir,
        save_stages=save_stages,
        tokenizer=tokenizer,
        dataset=data,
        num_calibration_samples=len(data),
        max_seq_length=seq_len,
        shuffle_calibration_samples=False,
    )


def _point_at_true_config(model, directory: str, processor=None) -> None:
    """Give a shrunk model (empty ``_name_or_path``) a directory with its config.

    ``oneshot`` reads ``config.json`` from ``_name_or_path`` to check the model and, at
    save, to rewrite the saved config from it; an empty path fails the first, a dense
    parent's path would undo the shrink in the second. The processor goes there too,
    for modifiers that tokenize text of their own (post-training).
    """
    path = model.config._name_or_path
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return
    os.makedirs(directory, exist_ok=True)
    model.config.save_pretrained(directory)
    if processor is not None:
        processor.save_pretrained(directory)
    model.config._name_or_path = directory


def _write_recipe_history(
    stages: Sequence[Recipe], source_recipe: str | None, path: Path
) -> None:
    """``recipe.yaml`` = the source model's recipe (if any) + every stage run so far."""
    previous = source_recipe
    for stage in stages:
        stage.yaml(file_path=str(path), existing_recipe_path=previous)
        previous = str(path)
