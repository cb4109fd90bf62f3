"""Database step: a store bound to what it is built from, and its builder.

The builder's hook and layer-by-layer finishing are driven by LLM Compressor's
sequential pipeline (see :class:`~darwin_modifier.modifier.base.DarwinLMModifier`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from darwin_modifier.artifacts import config_digest, weights_digest
from darwin_modifier.data.windows import check_text_column
from darwin_modifier.database.build import DatabaseBuilder
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.distributed import main_rank_first
from darwin_modifier.families import family_of
from darwin_modifier.latency.build import check_speed_target
from darwin_modifier.pipeline.config import DarwinLMConfig
from darwin_modifier.plan import DenseShape


def open_database(
    model: nn.Module, config: DarwinLMConfig, calibration: str
) -> tuple[DatabaseStore, DatabaseBuilder]:
    """Resume or start the database of ``model`` at ``config.database_dir``.

    ``calibration`` identifies the calibration tokens (of all ranks). Unsupported
    architectures and infeasible targets fail here, before any calibration.
    """
    family_of(model.config)
    config.check_model(model.config)
    check_speed_target(config, config.database_dir)
    if config.generations > 0:
        check_text_column(config.search_dataset, config.search_text_column)
    shape = DenseShape.from_config(model.config)
    ladders = config.checked_ladders(shape)
    identity = {
        # content, not path: the same weights elsewhere resume, new weights saved
        # over the old path do not
        "model_config": config_digest(model.config),
        "model_weights": weights_digest(model),
        "shape": shape.__dict__,
        "calibration": calibration,
        "gqa_mode": config.gqa_mode,
        "damp": config.damp,
        "dtype": str(next(model.parameters()).dtype),
        "storage_dtype": config.database_dtype,
    }
    with main_rank_first():  # it creates the manifest that the others read
        store = DatabaseStore.open_or_create(config.database_dir, identity, ladders)
    return store, DatabaseBuilder(model, store, config.gqa_mode, config.damp)


def load_database(database_dir: str | Path, config=None) -> DatabaseStore:
    """A complete database (with a model ``config``: refused if built for another
    model)."""
    store = DatabaseStore.open(database_dir, config)
    store.require_complete()
    return store
