"""The LLM Compressor modifiers; importing them registers their names for YAML."""

from llmcompressor.modifiers.factory import ModifierFactory

from darwin_modifier.modifier.base import DarwinLMModifier, StageSpec
from darwin_modifier.modifier.posttrain import DarwinLMTrainingModifier

ModifierFactory.register("DarwinLMModifier", DarwinLMModifier)
ModifierFactory.register("DarwinLMTrainingModifier", DarwinLMTrainingModifier)

__all__ = ["DarwinLMModifier", "DarwinLMTrainingModifier", "StageSpec"]
