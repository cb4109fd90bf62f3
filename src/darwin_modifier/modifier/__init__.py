"""The LLM Compressor modifiers; importing them registers their names for YAML."""

from llmcompressor.modifiers.factory import ModifierFactory

from darwin_modifier.modifier.base import DarwinLMModifier
from darwin_modifier.modifier.posttrain import DarwinLMTrainingModifier
from darwin_modifier.search.config import Stage

ModifierFactory.register("DarwinLMModifier", DarwinLMModifier)
ModifierFactory.register("DarwinLMTrainingModifier", DarwinLMTrainingModifier)

__all__ = ["DarwinLMModifier", "DarwinLMTrainingModifier", "Stage"]
