"""Local text splits like the default corpus: held-out text is never trained on."""

from __future__ import annotations

from darwin_modifier.data.windows import load_texts

SPLITS = ("calibration", "train", "heldout")


def test_a_single_file_is_cut_by_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    parts = {s: load_texts(str(path), s) for s in SPLITS}
    lines = {s: "".join(t).splitlines() for s, t in parts.items()}
    assert [len(lines[s]) for s in SPLITS] == [20, 70, 10]
    assert lines["heldout"] == [f"line {i}" for i in range(90, 100)]
    assert sum((lines[s] for s in SPLITS), []) == [f"line {i}" for i in range(100)]


def test_a_directory_is_split_by_file(tmp_path):
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}")
    parts = {s: set(load_texts(tmp_path, s)) for s in SPLITS}
    assert all(parts.values())
    assert not parts["heldout"] & (parts["train"] | parts["calibration"])
    assert set().union(*parts.values()) == {f"document {i}" for i in range(40)}


def test_token_ids_are_cached_per_text_and_tokenizer(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from darwin_modifier.data import fetch_default_model
    from darwin_modifier.data.token_cache import joined_ids

    tokenizer = AutoTokenizer.from_pretrained(fetch_default_model())
    monkeypatch.setenv("DARWIN_CACHE", str(tmp_path))  # after: the model is cached
    texts = ["def f(x):\n    return x", "import os", "print('hi')"]
    fresh = []
    for text in texts:
        fresh += tokenizer(text, add_special_tokens=False)["input_ids"]
        fresh.append(tokenizer.eos_token_id)
    assert joined_ids(texts, tokenizer).tolist() == fresh  # tokenized and stored
    (stored,) = (tmp_path / "tokens").iterdir()
    assert joined_ids(texts, tokenizer).tolist() == fresh  # read back
    last = len(tokenizer(texts[-1], add_special_tokens=False)["input_ids"]) + 1
    assert joined_ids(texts[:2], tokenizer).tolist() == fresh[:-last]  # other texts
    stored.write_bytes(stored.read_bytes()[:20])  # torn by a full disk
    assert joined_ids(texts, tokenizer).tolist() == fresh
