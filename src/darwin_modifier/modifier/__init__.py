"""The LLM Compressor modifier; importing it registers ``DarwinLMModifier`` for YAML."""

from llmcompressor.modifiers.factory import ModifierFactory

from darwin_modifier.modifier.base import DarwinLMModifier, StageSpec

ModifierFactory.register("DarwinLMModifier", DarwinLMModifier)

__all__ = ["DarwinLMModifier", "StageSpec"]
