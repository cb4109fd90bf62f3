"""Calibration data for ``oneshot``: whole windows of real text, pre-tokenized.

``oneshot`` accepts a pre-tokenized ``datasets.Dataset``; cutting the text into whole
windows here means every calibration token is real text (not padding, and not only the
first ``max_seq_length`` tokens of each long document).
"""

from __future__ import annotations

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
    try:
        windows = token_windows(texts, tokenizer, seq_len, num_samples, seed=seed)
    except ValueError as err:
        raise ValueError(f"calibration data {source}: {err}") from err
    return Dataset.from_dict(
        {
            "input_ids": windows.tolist(),
            "attention_mask": [[1] * seq_len] * len(windows),
        }
    )
