"""Database step: a store bound to what it is built from, and its builder.

The builder's hook and layer-by-layer finishing are driven by LLM Compressor's
sequential pipeline (see :class:`~darwin_modifier.modifier.base.DarwinLMModifier`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from darwin_modifier.database.build import DatabaseBuilder
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.families import family_of
from darwin_modifier.pipeline.config import DarwinLMConfig
from darwin_modifier.plan import DenseShape


def open_database(
    model: nn.Module, config: DarwinLMConfig, calibration: str
) -> tuple[DatabaseStore, DatabaseBuilder]:
    """Resume or start the database of ``model`` at ``config.database_dir``.

    ``calibration`` identifies the calibration tokens. Unsupported architectures and
    infeasible targets fail here, before any calibration.
    """
    family_of(model.config)
    shape = DenseShape.from_config(model.config)
    ladders = config.checked_ladders(shape)
    identity = {
        "source_model": getattr(model.config, "_name_or_path", ""),
        "shape": shape.__dict__,
        "calibration": calibration,
        "gqa_mode": config.gqa_mode,
        "damp": config.damp,
        "dtype": str(next(model.parameters()).dtype),
        "storage_dtype": config.database_dtype,
    }
    store = DatabaseStore.open_or_create(config.database_dir, identity, ladders)
    return store, DatabaseBuilder(model, store, config.gqa_mode, config.damp)


def check_calibration_memory(
    model: nn.Module, tokens: int, available: int | None = None
) -> int:
    """Refuse a calibration whose activation cache cannot fit in host memory.

    LLM Compressor's sequential pipeline keeps every calibration sample's hidden states
    between layers on the CPU (``sequential_offload_device``): tokens x hidden size x
    the model's element size (2^24 tokens of an 8B model: 137 GB). Better refused now
    than swapping or killed hours into the build. Returns the estimate in bytes.
    """
    import psutil

    parameter = next(model.parameters())
    need = tokens * model.config.hidden_size * parameter.element_size()
    available = psutil.virtual_memory().available if available is None else available
    if need > 0.9 * available:
        raise ValueError(
            f"calibration needs about {need / 2**30:.1f} GiB of host memory for "
            f"LLM Compressor's activation cache ({tokens:,} tokens x hidden "
            f"{model.config.hidden_size} x {parameter.element_size()} bytes), more "
            f"than the {available / 2**30:.1f} GiB available: lower "
            "num_calibration_samples (or max_seq_length), or use a machine with "
            "more memory"
        )
    return need


def load_database(database_dir: str | Path, config=None) -> DatabaseStore:
    """A complete database (with a model ``config``: refused if built for another
    model)."""
    store = DatabaseStore.open(database_dir, config)
    store.require_complete()
    return store
