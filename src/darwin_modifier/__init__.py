"""darwin-modifier: DarwinLM evolutionary structured pruning for LLM Compressor.

Importing the package registers the shrunk-model format with transformers' Auto classes.
The serve environment has no llmcompressor, and vLLM imports this ``__init__`` through the
plugin entry point, so nothing here may import llmcompressor unconditionally.
"""

from darwin_modifier import format as _format  # noqa: F401  (Auto-class registration)
from darwin_modifier.plan import DenseShape, LayerPlan, Plan

__version__ = "0.1.0"
__all__ = ["DenseShape", "LayerPlan", "Plan", "__version__"]
