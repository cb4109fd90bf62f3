"""Text from anywhere -> fixed-length token windows.

Sources: ``"python-docs"`` (the default local corpus), a hub dataset name (``"name"`` or
``"name:config"``, loaded with ``datasets.load_dataset``), a ``datasets.Dataset``, or
local text files / a directory of them (split by file name, or by lines for a single
file: see :func:`local_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from darwin_modifier.data.corpus import SPLITS, corpus_split, split_of

# Hub datasets: disjoint document ranges of the streamed "train" split, because many
# pretraining corpora (FineWeb-Edu, ...) have no validation split.
_HUB_RANGES = {
    "calibration": (0, 10_000),
    "train": (10_000, 30_000),
    "heldout": (30_000, 32_000),
}


def load_texts(
    source, split: str = "calibration", text_column: str = "text"
) -> list[str]:
    """Documents of ``split`` from ``source`` (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if isinstance(source, str) and source == "python-docs":
        return corpus_split(split)
    if isinstance(source, (str, Path)) and Path(source).exists():
        return local_split(Path(source), split)
    if isinstance(source, str):
        import datasets

        name, _, config = source.partition(":")
        dataset = datasets.load_dataset(
            name, config or None, split="train", streaming=True
        )
        start, stop = _HUB_RANGES[split]
        return _column(dataset.skip(start).take(stop - start), text_column, source)
    if isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        return list(source)
    return _column(source, text_column, type(source).__name__)


def local_split(path: Path, split: str) -> list[str]:
    """``split`` of local text: whole files by a hash of their names (as the default
    corpus), or, where that leaves a split empty (a single file, a handful), every
    file's lines cut 20% / 70% / 10% in order. Held-out text is never trained on."""
    files = (
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    )
    if not files:
        raise ValueError(f"{path} holds no files")
    names = [str(f.relative_to(path)) if path.is_dir() else f.name for f in files]
    by_name = {s: [f for f, n in zip(files, names) if split_of(n) == s] for s in SPLITS}
    read = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    if all(by_name.values()):
        return [t for t, f in zip(read, files) if f in by_name[split]]
    start, stop = {"calibration": (0, 2), "train": (2, 9), "heldout": (9, 10)}[split]
    texts = []
    for text in read:
        lines = text.splitlines(keepends=True)
        part = lines[len(lines) * start // 10 : len(lines) * stop // 10]
        if part:
            texts.append("".join(part))
    return texts


def _column(rows, text_column: str, what: str) -> list[str]:
    texts = []
    for row in rows:
        if text_column not in row:
            raise ValueError(
                f"{what} has no column {text_column!r} (columns: {sorted(row)}); "
                "pass text_column=..."
            )
        texts.append(row[text_column])
    return texts


def token_windows(
    texts: list[str],
    tokenizer,
    seq_len: int,
    num_windows: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``[n, seq_len]`` token ids: documents joined by EOS and cut into windows.

    With ``num_windows`` a seeded random subset is taken, so different budgets of the
    same source draw from the whole corpus rather than its first files.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    total = len(ids) // seq_len
    if total == 0:
        raise ValueError(
            f"the texts hold {len(ids)} tokens, fewer than one window of {seq_len}"
        )
    windows = torch.tensor(ids[: total * seq_len]).view(total, seq_len)
    if num_windows is None:
        return windows
    if num_windows > total:
        raise ValueError(
            f"asked for {num_windows} windows of {seq_len} tokens but the texts "
            "hold only "
            f"{total}; use fewer or shorter windows, or more text"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return windows[order[:num_windows].sort().values]
