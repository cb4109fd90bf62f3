"""The DarwinLM pipeline as plain functions, one per step of the data path:

calibration data -> :func:`open_database` (built layer by layer during calibration)
-> :func:`search` -> :func:`materialize` (the shrunk model) -> :func:`train_model`.

The LLM Compressor modifiers, the CLI, the demo and the benchmarks all call these;
their settings are :class:`DarwinLMConfig` and :class:`TrainingConfig`.
"""

from darwin_modifier.pipeline.config import DarwinLMConfig, SizeTarget, TrainingConfig
from darwin_modifier.pipeline.database import load_database, open_database
from darwin_modifier.pipeline.search import (
    SearchOutcome,
    build_pools,
    materialize,
    plan_of,
    search,
)
from darwin_modifier.pipeline.training import TrainingData, train_model

__all__ = [
    "DarwinLMConfig",
    "SearchOutcome",
    "SizeTarget",
    "TrainingConfig",
    "TrainingData",
    "build_pools",
    "load_database",
    "materialize",
    "open_database",
    "plan_of",
    "search",
    "train_model",
]
