"""Python entry points around ``oneshot`` for the common jobs."""

from __future__ import annotations

from pathlib import Path

from darwin_modifier.artifacts.checkpoint import check_weights
from darwin_modifier.artifacts.output import publishing, refuse_work_dirs_inside
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.modifier.base import DarwinLMModifier
from darwin_modifier.modifier.chain import calibration_share, split_stages, work_dirs
from darwin_modifier.modifier.rules import calibration_changes_weights
from darwin_modifier.pipeline import load_database


def run_oneshot(
    model: str | Path,
    recipe,
    output_dir: str | Path | None = None,
    dataset="python-docs",
    num_samples: int = 64,
    seq_len: int = 512,
    seed: int = 0,
    text_column: str = "text",
):
    """``oneshot`` with our calibration windows; returns the (shrunk) model."""
    from llmcompressor import oneshot

    stages = split_stages(recipe)
    modifiers = [m for stage in stages for m in stage.modifiers]
    check_weights(model)
    refuse_work_dirs_inside(output_dir, work_dirs(stages))
    tokenizer, data = calibration_share(
        model, dataset, num_samples, seq_len, seed, text_column
    )
    with publishing(output_dir) as staging:  # whole, sealed, or not at all
        return oneshot(
            model=str(model),
            tokenizer=tokenizer,
            dataset=data,
            recipe=recipe,
            output_dir=None if staging is None else str(staging),
            num_calibration_samples=len(data),
            max_seq_length=seq_len,
            shuffle_calibration_samples=False,
            propagate_error=calibration_changes_weights(modifiers),
        )


def build_database(
    model: str | Path,
    database_dir: str | Path,
    dataset="python-docs",
    num_samples: int = 64,
    seq_len: int = 512,
    **modifier_settings,
) -> DatabaseStore:
    """Only the database (no search, no shrink): build once, search many times."""
    modifier_settings.setdefault("search_dir", str(Path(database_dir) / "report"))
    modifier = DarwinLMModifier(
        database_dir=str(database_dir), generations=0, shrink=False, **modifier_settings
    )
    run_oneshot(model, [modifier], None, dataset, num_samples, seq_len)
    return load_database(database_dir)
