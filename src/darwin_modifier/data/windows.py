"""Text from anywhere -> fixed-length token windows.

Sources: ``"python-docs"`` (the default local corpus), a hub dataset name (``"name"`` or
``"name:config"``, streamed with ``datasets.load_dataset``), a ``datasets.Dataset``, or
local text files / a directory of them (split by file name, or by lines for a single
file: see :func:`local_split`).

Hub datasets are streamed, never downloaded whole, and read only as far as the windows
asked for need: the paper's 2^23-2^24 calibration tokens or ~20M training tokens of
FineWeb-Edu are a few percent of one pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from darwin_modifier.data.corpus import SPLITS, corpus_split, split_of
from darwin_modifier.data.token_cache import joined_ids

# Hub datasets: the streamed "train" split (many pretraining corpora, FineWeb-Edu
# among them, have no other), dealt out by document index so that the three splits
# are disjoint whatever their sizes: of every 50 documents, 1 is held out, 15
# calibrate and 34 train.
_HUB_DEAL = 50
_HUB_SHARES = {
    "heldout": range(0, 1),
    "calibration": range(1, 16),
    "train": range(16, 50),
}


def hub_split(index: int) -> str:
    """The split of a hub dataset's ``index``-th document."""
    return next(s for s, r in _HUB_SHARES.items() if index % _HUB_DEAL in r)


def load_texts(
    source, split: str = "calibration", text_column: str = "text"
) -> Sequence[str] | Iterator[str]:
    """Documents of ``split`` from ``source`` (see the module docstring): a list, or
    for a hub dataset a lazy stream (read only as far as it is consumed)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    check_text_column(source, text_column)
    if isinstance(source, str) and source == "python-docs":
        return corpus_split(split)
    if isinstance(source, (str, Path)) and Path(source).exists():
        if Path(source).suffix == ".jsonl":
            return jsonl_split(Path(source), split, text_column)
        return local_split(Path(source), split)
    if isinstance(source, str):
        import datasets

        name, _, config = source.partition(":")
        try:
            dataset = datasets.load_dataset(
                name, config or None, split="train", streaming=True
            )
        except FileNotFoundError:
            raise  # a local path that does not exist: its message names it
        except (ConnectionError, OSError, ValueError) as err:
            # the hub's own errors say "couldn't reach" or "doesn't exist" deep in
            # a traceback; the fix depends on which
            raise ValueError(
                f"cannot open dataset {source!r}: {err}; check the name (and "
                "'name:config'), the network, or give a local file or directory"
            ) from err
        return _stream(dataset, split, text_column, source)
    if isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        return list(source)
    return _column(source, text_column, type(source).__name__)


def check_text_column(source, text_column: str) -> None:
    """Refuse, without reading anything, a text column that plain text cannot
    have (the default corpus, local text files)."""
    plain = source == "python-docs" or (
        isinstance(source, (str, Path))
        and Path(source).exists()
        and Path(source).suffix != ".jsonl"
    )
    if plain and text_column != "text":
        raise ValueError(
            f"{source} is plain text with no columns, so text column "
            f"{text_column!r} cannot apply; leave it at 'text' (or give a .jsonl "
            "file or a dataset with that column)"
        )


def _share(items: list, split: str) -> list:
    """The first 20% / next 70% / last 10% of ``items`` (calibration, train,
    held-out)."""
    start, stop = {"calibration": (0, 2), "train": (2, 9), "heldout": (9, 10)}[split]
    return items[len(items) * start // 10 : len(items) * stop // 10]


def jsonl_split(path: Path, split: str, text_column: str) -> list[str]:
    """``split`` of a JSON-lines file: its rows' ``text_column``, cut as
    :func:`_share`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return _column(_share(rows, split), text_column, str(path))


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
    texts = []
    for text in read:
        part = _share(text.splitlines(keepends=True), split)
        if part:
            texts.append("".join(part))
    return texts


def _text(row, text_column: str, what: str) -> str:
    if text_column not in row:
        raise ValueError(
            f"{what} has no column {text_column!r} (columns: {sorted(row)}); "
            "pass text_column=..."
        )
    return row[text_column]


def _column(rows, text_column: str, what: str) -> list[str]:
    return [_text(row, text_column, what) for row in rows]


def _stream(rows: Iterable, split: str, text_column: str, what: str) -> Iterator[str]:
    for index, row in enumerate(rows):
        if hub_split(index) == split:
            yield _text(row, text_column, what)


def token_windows(
    texts: Sequence[str] | Iterator[str],
    tokenizer,
    seq_len: int,
    num_windows: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``[n, seq_len]`` token ids: documents joined by EOS and cut into windows.

    With ``num_windows`` a seeded random subset of a list's windows is taken, so
    different budgets of the same source draw from the whole corpus rather than its
    first files. A stream (hub datasets) is read until it holds ``num_windows``
    windows, which are taken in order: the stream is already a sample.
    """
    streamed = not isinstance(texts, Sequence)
    if streamed and num_windows is None:
        raise ValueError("a streamed dataset needs a window count (num_windows)")
    if streamed:
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        for text in texts:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            ids.append(eos)
            if len(ids) >= num_windows * seq_len:
                break
    else:
        ids = joined_ids(texts, tokenizer)
    total = len(ids) // seq_len
    if total == 0 or (num_windows is not None and num_windows > total):
        asked = "one window" if num_windows is None else f"{num_windows} windows"
        raise ValueError(
            f"asked for {asked} of {seq_len} tokens but the texts hold {len(ids)} "
            f"tokens ({total} windows); use fewer or shorter windows, or more text"
        )
    windows = torch.as_tensor(ids[: total * seq_len]).view(total, seq_len)
    if num_windows is None:
        return windows
    if streamed:
        return windows[:num_windows]
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return windows[order[:num_windows].sort().values]
