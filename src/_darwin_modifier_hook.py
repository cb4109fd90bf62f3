"""Lets LLM Compressor recipes name darwin-modifier's modifiers without an import.

LLM Compressor 0.14 finds recipe modifiers by name only among its own and those
registered with ``ModifierFactory.register``, which needs ``import darwin_modifier``
first. ``darwin_modifier.pth`` imports this module at interpreter start. It does
nothing until LLM Compressor's factory module is imported, and then wraps
``ModifierFactory.create`` once: a recipe that names one of our modifiers imports
``darwin_modifier`` (which registers them) instead of failing with "No modifier of type
... found". Kept outside the package so that start-up does not import torch.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.abc import MetaPathFinder

_FACTORY = "llmcompressor.modifiers.factory"
_OURS = ("DarwinLMModifier", "DarwinLMTrainingModifier")


class _FactoryWatcher(MetaPathFinder):
    """Finds nothing itself; patches the factory module right after it executes."""

    def find_spec(self, name, path=None, target=None):
        if name != _FACTORY:
            return None
        sys.meta_path.remove(self)  # once, and not when looking up the real spec
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _wrap_create(module.ModifierFactory)

        spec.loader.exec_module = exec_module
        return spec


def _wrap_create(factory) -> None:
    create = factory.create

    def create_or_import_darwin_modifier(type_, *args, **kwargs):
        if type_ in _OURS and type_ not in factory._registered_registry:
            import darwin_modifier  # noqa: F401  (registers our modifiers)
        return create(type_, *args, **kwargs)

    factory.create = staticmethod(create_or_import_darwin_modifier)


def install() -> None:
    if _FACTORY in sys.modules:  # already imported: patch it now
        _wrap_create(sys.modules[_FACTORY].ModifierFactory)
    elif not any(isinstance(f, _FactoryWatcher) for f in sys.meta_path):
        sys.meta_path.insert(0, _FactoryWatcher())


install()
