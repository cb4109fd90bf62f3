"""Memory plan: the peak of each phase of a run, from a model's config alone, checked
before any work (``darwin-modifier plan`` and ``DarwinLMModifier.on_initialize``)."""

from darwin_modifier.memory.check import (
    MemoryPlan,
    check_run,
    machine_capacity,
    plan_run,
    refusal,
)
from darwin_modifier.memory.phases import GiB, Phase
from darwin_modifier.memory.spec import ModelSpec

__all__ = [
    "GiB",
    "MemoryPlan",
    "ModelSpec",
    "Phase",
    "check_run",
    "machine_capacity",
    "plan_run",
    "refusal",
]
