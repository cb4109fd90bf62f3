"""Python entry points around ``oneshot`` for the common jobs.

``oneshot`` accepts a pre-tokenized ``datasets.Dataset``; we cut calibration text into
whole windows ourselves, so every calibration token is real text (not padding, and not
only the first ``max_seq_length`` tokens of each long document).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from darwin_modifier.data.windows import load_texts, token_windows


def calibration_dataset(
    tokenizer,
    source="python-docs",
    num_samples: int = 64,
    seq_len: int = 512,
    seed: int = 0,
    text_column: str = "text",
):
    """``num_samples`` windows of ``seq_len`` tokens from ``source``'s calibration
    split."""
    from datasets import Dataset

    texts = load_texts(source, "calibration", text_column)
    windows = token_windows(texts, tokenizer, seq_len, num_samples, seed=seed)
    return Dataset.from_dict(
        {
            "input_ids": windows.tolist(),
            "attention_mask": [[1] * seq_len] * len(windows),
        }
    )


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

    import darwin_modifier  # noqa: F401  (DarwinLMModifier for YAML recipes)

    tokenizer = AutoTokenizer.from_pretrained(model)
    data = calibration_dataset(
        tokenizer, dataset, num_samples, seq_len, seed, text_column
    )
    return oneshot(
        model=str(model),
        tokenizer=tokenizer,
        dataset=data,
        recipe=recipe,
        output_dir=None if output_dir is None else str(output_dir),
        num_calibration_samples=len(data),
        max_seq_length=seq_len,
        shuffle_calibration_samples=False,
    )


def build_database(
    model: str | Path,
    database_dir: str | Path,
    dataset="python-docs",
    num_samples: int = 64,
    seq_len: int = 512,
    **modifier_settings,
):
    """Only the database (no search, no shrink): build once, search many times."""
    from darwin_modifier.modifier.base import DarwinLMModifier

    modifier_settings.setdefault("search_dir", str(Path(database_dir) / "report"))
    modifier = DarwinLMModifier(
        database_dir=str(database_dir), generations=0, shrink=False, **modifier_settings
    )
    run_oneshot(model, [modifier], None, dataset, num_samples, seq_len)
    from darwin_modifier.database.store import DatabaseStore

    return DatabaseStore.open(database_dir)
