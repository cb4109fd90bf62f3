"""Recipe rules: which modifiers may share a oneshot pass, and in which order.

LLM Compressor 0.14 flattens every ``*_stage`` of a recipe into one list of modifiers
and runs them in *one* lifecycle: all are initialized on the dense model before any
calibration, each calibrates in turn, and all finalize at the end. DarwinLM shrinks the
model (and training changes its weights) in ``on_finalize``, after a quantizer in the
same pass has calibrated the dense weights, so a quantization stage must run in its own
``oneshot`` (:mod:`darwin_modifier.modifier.chain`).

The rules work on what modifiers declare: ``darwinlm_role`` (``"prune"`` for
DarwinLM, ``"train"`` for post-training) and LLM Compressor's ``QuantizationMixin``, so
this module imports neither of our modifiers and they both import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llmcompressor.modifiers import Modifier
from llmcompressor.recipe import Recipe

from darwin_modifier.modifier.alignment import check_quantization_alignment

__all__ = [
    "check_stages",
    "check_training_order",
    "refuse_quantization_in_same_pass",
]


def _quantizers(modifiers: Iterable[Modifier]) -> list[Modifier]:
    from llmcompressor.modifiers.quantization import QuantizationMixin

    return [m for m in modifiers if isinstance(m, QuantizationMixin)]


def _role(modifier: Modifier) -> str | None:
    return getattr(type(modifier), "darwinlm_role", None)


def calibration_changes_weights(modifiers: Iterable[Modifier]) -> bool:
    """Whether a pass needs LLM Compressor's error propagation (``propagate_error``).

    With it on, the sequential pipeline runs every layer twice: once with the
    modifiers' hooks, once more to pass on the outputs of the layer as compressed so
    far. Our modifiers only observe during calibration (Hessians) and change weights at
    finalize, so for a pass of only ours the second run repeats the first exactly and
    doubles the calibration time.
    """
    return not all(_role(m) is not None for m in modifiers)


def _darwins(modifiers: Iterable[Modifier]) -> list[Modifier]:
    """DarwinLM modifiers that shrink the model (not a database-only run)."""
    return [m for m in modifiers if _role(m) == "prune" and m.shrink]


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
    return [m for m in modifiers if _role(m) == "train"]


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
