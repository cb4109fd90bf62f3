"""darwin-modifier: DarwinLM evolutionary structured pruning for LLM Compressor.

Importing the package registers the shrunk-model format with transformers' Auto classes
and, where llmcompressor is installed, ``DarwinLMModifier`` and
``DarwinLMTrainingModifier`` with its recipe factory. The
serve environment has no llmcompressor, and vLLM imports this ``__init__`` through the
plugin entry point, so llmcompressor is only imported when it is there.
"""

from importlib.util import find_spec

from darwin_modifier import format as _format  # noqa: F401  (Auto-class registration)
from darwin_modifier.plan import DenseShape, LayerPlan, Plan

__version__ = "0.1.0"
__all__ = ["DenseShape", "LayerPlan", "Plan", "__version__"]

if find_spec("llmcompressor") is not None:
    from darwin_modifier.modifier import (  # noqa: F401
        DarwinLMModifier,
        DarwinLMTrainingModifier,
    )

    __all__ += ["DarwinLMModifier", "DarwinLMTrainingModifier"]
