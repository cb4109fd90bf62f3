"""Run a recipe stage by stage: one ``oneshot`` per ``*_stage``.

A quantization stage after DarwinLM must see the shrunk shapes, so it runs in its own
``oneshot`` after DarwinLM's has finished (:mod:`darwin_modifier.modifier.rules` says
why). :func:`oneshot_stages` does that for a whole recipe and handles what plain
``oneshot(stage=...)`` chaining trips over after a shrink: the shrunk model's
``_name_or_path`` is empty so that the save keeps its true config, and the next
``oneshot`` reads ``config.json`` from it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from llmcompressor.modifiers import Modifier
from llmcompressor.recipe import Recipe

from darwin_modifier.artifacts.checkpoint import check_weights
from darwin_modifier.artifacts.output import publishing, refuse_work_dirs_inside
from darwin_modifier.data.calibration import calibration_dataset
from darwin_modifier.distributed import (
    barrier,
    init_from_env,
    is_main,
    main_rank_first,
    rank,
    world_size,
)
from darwin_modifier.modifier.rules import calibration_changes_weights, check_stages

__all__ = ["oneshot_stages", "run_oneshot_stages", "split_stages"]


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
        recipe = _read_yaml(recipe)
    if not isinstance(recipe, dict):
        raise ValueError(
            f"a recipe is a mapping of stages or modifiers, not "
            f"{type(recipe).__name__} ({recipe!r:.60})"
        )
    args = recipe.get("args", {})
    stages = [
        Recipe.from_dict({"args": args, key: value})
        for key, value in recipe.items()
        if key.endswith("_stage") and isinstance(value, dict)
    ]
    stages = stages or [Recipe.from_dict(recipe)]
    for stage in stages:
        if not stage.modifiers:
            raise ValueError(
                f"recipe stage {stage.stage or '(default)'!r} has no modifiers: "
                "modifier groups are keys ending in '_modifiers', e.g. "
                "'darwinlm_modifiers: {DarwinLMModifier: {...}}'"
            )
    return stages


def _read_yaml(recipe: str | os.PathLike):
    """A recipe file's or string's content; missing files and bad YAML named."""
    text = str(recipe)
    if os.path.isfile(text):
        content = Path(text).read_text()
    elif "\n" not in text and text.endswith((".yaml", ".yml", ".json")):
        raise FileNotFoundError(f"recipe file {text} does not exist")
    else:
        content = text
    try:
        parsed = yaml.safe_load(content)  # YAML is a superset of JSON
    except yaml.YAMLError as err:
        raise ValueError(f"recipe is not valid YAML: {err}") from err
    if parsed is None:
        where = f" {text}" if os.path.isfile(text) else ""
        raise ValueError(f"recipe{where} is empty: it names no stage or modifier")
    return parsed


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
    ``oneshot(stage=...)`` does. The saved ``recipe.yaml`` lists all stages. The
    output appears only when every stage has finished, sealed (``darwin-modifier
    verify``), in place of the previous one (:mod:`darwin_modifier.artifacts.output`).
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
    _refuse_output_over_input(model, output_dir)
    refuse_work_dirs_inside(output_dir, work_dirs(stages))
    if isinstance(model, str | os.PathLike):
        check_weights(model)

    kwargs = dict(oneshot_kwargs)
    with (
        tempfile.TemporaryDirectory(prefix="darwinlm-stages-") as bridge,
        publishing(output_dir) as staging,  # refuses a foreign output_dir first
    ):
        for i, stage in enumerate(stages):
            last = i == len(stages) - 1
            stage_dir = None
            if last:
                stage_dir = staging
            elif save_stages and staging is not None:
                stage_dir = staging / stage.stage
            if not isinstance(model, str | os.PathLike):
                _point_at_true_config(
                    model, os.path.join(bridge, str(i)), kwargs.get("processor")
                )
            run = Oneshot(
                model=model,
                recipe=stage,
                output_dir=None if stage_dir is None else str(stage_dir),
                **{
                    "propagate_error": calibration_changes_weights(stage.modifiers),
                    **kwargs,
                },
            )
            run()
            model = run.model
            # later stages reuse the processor the first one loaded
            kwargs.pop("tokenizer", None)
            kwargs["processor"] = run.processor
            if stage_dir is not None:
                model.config._name_or_path = str(stage_dir)
                if is_main():  # oneshot saves on the main rank only
                    _write_recipe_history(
                        stages[: i + 1], source_recipe, Path(stage_dir) / "recipe.yaml"
                    )
                barrier()
        if output_dir is None and model.config._name_or_path.startswith(bridge):
            model.config._name_or_path = ""
    if output_dir is not None:
        model.config._name_or_path = str(output_dir)  # published there
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
    tokenizer, data = calibration_share(
        model, dataset, num_samples, seq_len, seed, text_column
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


def calibration_share(
    model: str | os.PathLike,
    dataset="python-docs",
    num_samples: int = 64,
    seq_len: int = 512,
    seed: int = 0,
    text_column: str = "text",
):
    """(tokenizer, this rank's calibration windows): whole windows of real text; under
    torchrun the process group is joined and each rank gets a contiguous share (see
    ``DarwinLMModifier``'s check on repeated shares)."""
    from transformers import AutoTokenizer

    if num_samples < 1 or seq_len < 1:
        raise ValueError(
            f"num_samples and seq_len must be positive, got {num_samples} and {seq_len}"
        )
    init_from_env()
    if num_samples < world_size():
        raise ValueError(
            f"num_samples {num_samples} leaves some of the {world_size()} ranks "
            "without calibration data; give at least one sample per rank"
        )
    with main_rank_first():  # it fills the corpus and tokenizer caches
        tokenizer = AutoTokenizer.from_pretrained(model)
        data = calibration_dataset(
            tokenizer, dataset, num_samples, seq_len, seed, text_column
        )
    if world_size() > 1:
        data = data.shard(world_size(), rank(), contiguous=True)
    return tokenizer, data


def work_dirs(stages: Sequence[Recipe]) -> dict[str, str]:
    """Where the stages' modifiers keep resumable state, by field name."""
    found = {}
    for stage in stages:
        for modifier in stage.modifiers:
            for field in ("database_dir", "search_dir", "train_dir"):
                if directory := getattr(modifier, field, None):
                    found[f"{type(modifier).__name__}.{field}"] = directory
    return found


def _refuse_output_over_input(model, output_dir) -> None:
    """The save would overwrite the dense model it is still reading from."""
    source = model if isinstance(model, str | os.PathLike) else None
    source = source or getattr(getattr(model, "config", None), "_name_or_path", "")
    if output_dir is None or not source or not os.path.isdir(source):
        return
    if Path(output_dir).resolve() == Path(source).resolve():
        raise ValueError(
            f"output_dir {output_dir} is the input model's directory: the save would "
            "overwrite the model being compressed; choose another output_dir"
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
