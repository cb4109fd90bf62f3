"""darwin-modifier: DarwinLM evolutionary structured pruning for LLM Compressor.

Importing the package registers the shrunk-model format with transformers' Auto
classes. The modifiers (``DarwinLMModifier``, ``DarwinLMTrainingModifier``) load on
first use: as attributes here, or when a recipe names them (the start-up hook in
``_darwin_modifier_hook`` wraps LLM Compressor's factory). Importing llmcompressor here
would cost seconds, and its logging, in every tool that only loads a shrunk
checkpoint; the serve environment has no llmcompressor at all.
"""

import _darwin_modifier_hook  # noqa: F401  (also where darwin_modifier.pth is absent)
from darwin_modifier import format as _format  # noqa: F401  (Auto-class registration)
from darwin_modifier.plan import DenseShape, LayerPlan, Plan

__version__ = "0.1.0"
__all__ = ["DenseShape", "LayerPlan", "Plan", "__version__"]  # and, lazily:
_MODIFIERS = ("DarwinLMModifier", "DarwinLMTrainingModifier")


def __getattr__(name: str):
    if name not in _MODIFIERS:
        raise AttributeError(f"module 'darwin_modifier' has no attribute {name!r}")
    try:
        from darwin_modifier import modifier  # registers both with the factory
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("llmcompressor"):
            raise
        raise AttributeError(
            f"darwin_modifier.{name} needs llmcompressor, which this environment "
            "lacks: install darwin-modifier[compress] (the serve environment has "
            "only the format and the vLLM plugin)"
        ) from exc
    return getattr(modifier, name)
