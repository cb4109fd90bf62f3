"""The local lm-eval task: items a model can only answer by reading the passage."""

from __future__ import annotations

import pytest

from darwin_modifier.evaluation.mc_task import NUM_CHOICES, build_items, write_task


def documents(n: int, words: int = 80) -> list[str]:
    return [" ".join(f"d{d}w{i}" for i in range(words)) for d in range(n)]


def test_items_hold_the_true_continuation_among_distinct_others():
    texts = documents(6)
    items = build_items(texts, 50, seed=3)
    assert items == build_items(texts, 50, seed=3)  # seeded
    assert items != build_items(texts, 50, seed=4)
    labels = set()
    for item in items:
        choices = item["choices"]
        assert len(choices) == NUM_CHOICES == len(set(choices))
        true = choices[item["label"]]
        doc = item["context"].split()[0].split("w")[0]  # d<k>
        last = int(item["context"].split()[-1].split("w")[1])
        assert true.split()[0] == f"{doc}w{last + 1}"  # continues the passage
        assert len(true.split()) == 12
        others = [c for i, c in enumerate(choices) if i != item["label"]]
        assert all(not c.startswith(f"{doc}w") for c in others)  # other documents
        labels.add(item["label"])
    assert labels == set(range(NUM_CHOICES))


def test_too_few_distinct_documents_are_refused_not_looped_over():
    with pytest.raises(ValueError, match="distinct held-out documents"):
        build_items(documents(1) * 10, 5)  # one text, repeated
    with pytest.raises(ValueError, match="distinct held-out documents"):
        build_items(documents(8, words=20), 5)  # all shorter than a passage
    with pytest.raises(ValueError, match="at least 1"):
        build_items(documents(8), 0)


def test_task_files_are_written_for_lm_eval(tmp_path):
    source = tmp_path / "texts"
    source.mkdir()
    for i, text in enumerate(documents(200)):  # a tenth is held out
        (source / f"doc{i}.txt").write_text(text)
    directory = write_task(tmp_path / "task", source=str(source), num_items=7)
    yaml = (directory / "darwinlm_docs_mc.yaml").read_text()
    assert "task: darwinlm_docs_mc" in yaml and "output_type: multiple_choice" in yaml
    assert str(directory / "darwinlm_docs_mc.jsonl") in yaml
    assert len((directory / "darwinlm_docs_mc.jsonl").read_text().splitlines()) == 7
