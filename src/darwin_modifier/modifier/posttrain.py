"""DarwinLMTrainingModifier: post-compression training as a recipe stage.

LLM Compressor 0.14 has no training entry point, so training after the search is a
modifier that needs no calibration data (oneshot runs it with the data-free pipeline)
and trains in ``on_finalize``, where the model has its final shapes: after a
``DarwinLMModifier`` listed before it in the same stage, or in a later stage of
:func:`~darwin_modifier.modifier.chain.oneshot_stages`. ``oneshot(output_dir=...)`` then
saves the trained model in the same checkpoint format. The work itself is
:func:`darwin_modifier.pipeline.train_model`.
"""

from __future__ import annotations

from typing import ClassVar

from llmcompressor.core import State
from llmcompressor.modifiers import Modifier

from darwin_modifier.distributed import refuse_distributed
from darwin_modifier.modifier.inplace import undo_offloading
from darwin_modifier.modifier.rules import (
    check_training_order,
    refuse_quantization_in_same_pass,
)
from darwin_modifier.pipeline import TrainingConfig, TrainingData, train_model

__all__ = ["DarwinLMTrainingModifier"]


def refuse_distributed_training() -> None:
    refuse_distributed(
        "post-training (DarwinLMTrainingModifier)",
        "run the training stage in one process (darwin-modifier train --model "
        "<the pruned checkpoint>), after the DarwinLM stage under torchrun",
    )


class DarwinLMTrainingModifier(Modifier, TrainingConfig):
    """Train the (shrunk) model on a token budget.

    Loss: cross-entropy (the paper's) or distillation from ``teacher`` (``loss: kd``,
    optionally mixed with cross-entropy by ``ce_weight``). Fields: see
    :class:`~darwin_modifier.pipeline.TrainingConfig`.
    """

    darwinlm_role: ClassVar[str] = "train"  # for the recipe rules
    requires_calibration_data: bool = False

    def on_initialize(self, state: State, **kwargs) -> bool:
        from llmcompressor.core import active_session

        refuse_quantization_in_same_pass(self)  # it would calibrate untrained weights
        refuse_distributed_training()
        check_training_order(active_session().lifecycle.recipe.modifiers or [])
        self.check_teacher()
        # Text and tokenizer now, so that a bad source fails before any calibration.
        self._data = TrainingData.load(self, state.model)
        return True

    def on_finalize(self, state: State, **kwargs) -> bool:
        undo_offloading(state.model)  # the optimizer needs real parameters
        given = next(state.model.parameters()).dtype
        train_model(state.model, self, self._data)  # leaves the model in ``given``
        state.model.to(self.output_dtype(given))
        return True
