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
