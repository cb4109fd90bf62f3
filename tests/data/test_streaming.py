"""Paper-size data from a hub dataset: streamed, read only as far as needed, and the
calibration / training / held-out splits disjoint at any size."""

from __future__ import annotations

import pytest
import torch

from darwin_modifier.data.windows import hub_split, load_texts, token_windows

DOCUMENTS = 80_000


class DocumentTokenizer:
    """Every token of document ``i`` is ``i + 1`` (0 is EOS): windows name their
    documents. Lengths vary around 1,000 tokens."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        index, length = map(int, text.split())
        return {"input_ids": [index + 1] * length}


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset(name, streaming=True)`` answered by a generator that
    counts how many rows were read."""
    import datasets

    read = {"rows": 0}

    def rows():
        for i in range(DOCUMENTS):
            read["rows"] += 1
            yield {"text": f"{i} {900 + (i * 37) % 200}", "id": i}

    def load_dataset(name, config=None, split=None, streaming=False):
        assert (name, split, streaming) == ("org/fineweb-like", "train", True)
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return read


def documents(windows: torch.Tensor) -> set[int]:
    return {int(t) - 1 for t in windows.unique() if t != 0}


def test_paper_size_calibration_is_streamed_disjoint_from_training(fake_hub):
    tokenizer = DocumentTokenizer()
    texts = load_texts("org/fineweb-like", "calibration")
    calibration = token_windows(texts, tokenizer, 4096, 4096)  # 2^24 tokens
    assert calibration.shape == (4096, 4096)
    assert fake_hub["rows"] < DOCUMENTS  # stopped once it had enough
    train = token_windows(load_texts("org/fineweb-like", "train"), tokenizer, 4096, 512)
    heldout = token_windows(
        load_texts("org/fineweb-like", "heldout"), tokenizer, 4096, 8
    )
    cal_docs, train_docs, held_docs = map(documents, (calibration, train, heldout))
    assert not cal_docs & train_docs and not cal_docs & held_docs
    assert not train_docs & held_docs
    assert {hub_split(i) for i in cal_docs} == {"calibration"}
    assert {hub_split(i) for i in train_docs} == {"train"}
    assert len(cal_docs) > 15_000  # ~1,000 tokens each: the whole budget is real text


def test_a_stream_too_short_is_refused_with_the_numbers(fake_hub):
    with pytest.raises(ValueError, match="asked for 10000 windows of 4096 tokens but"):
        token_windows(
            load_texts("org/fineweb-like", "heldout"), DocumentTokenizer(), 4096, 10**4
        )
    with pytest.raises(ValueError, match="needs a window count"):
        token_windows(load_texts("org/fineweb-like", "train"), DocumentTokenizer(), 64)
