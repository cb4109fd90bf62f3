"""vLLM entry point (group ``vllm.general_plugins``, declared in pyproject.toml).

vLLM calls :func:`register` in every process it starts (front end, engine core,
workers), so registration cannot be left to the user's script. The package ``__init__``
has already registered the shrunk configs with transformers' ``AutoConfig`` by the time
this runs, which is what lets vLLM read ``config.json`` without ``trust_remote_code``.
"""

from __future__ import annotations

from darwin_modifier.families import FAMILIES

MODEL_MODULE = "darwin_modifier.serving.model"


def register() -> None:
    """Register the shrunk architectures with vLLM; safe to call any number of times."""
    from vllm import ModelRegistry

    import darwin_modifier.format  # noqa: F401  (AutoConfig registration, idempotent)

    supported = set(ModelRegistry.get_supported_archs())
    for family in FAMILIES:
        if family.architecture not in supported:
            # The lazy "module:Class" form keeps vLLM's model code out of processes
            # that never build the model (and out of this function's import time).
            ModelRegistry.register_model(
                family.architecture, f"{MODEL_MODULE}:{family.architecture}"
            )
