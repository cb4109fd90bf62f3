"""Atomic writes keep the old file when the writer dies; identities name what
differs."""

from __future__ import annotations

import pytest
import torch

from darwin_modifier.artifacts import replacing, require_same, tokens_digest, write_json


def test_a_writer_that_dies_leaves_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    write_json(path, {"generation": 1})
    with pytest.raises(KeyboardInterrupt):
        with replacing(path) as partial:
            partial.write_text('{"generation": 2, "hist')  # killed mid-write
            raise KeyboardInterrupt
    assert path.read_text() == '{\n "generation": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no debris


def test_differences_are_named():
    stored = {"database": "abc", "max_params": 10, "seed": 0}
    require_same(stored, dict(stored), what="x", fix="y")  # same: fine
    with pytest.raises(ValueError) as err:
        require_same(stored, {**stored, "max_params": 12}, what="state", fix="delete")
    assert str(err.value) == "state (max_params: stored 10, now 12); delete"
    with pytest.raises(ValueError, match="new: stored None, now 1"):
        require_same(stored, {**stored, "new": 1}, what="state", fix="delete")


def test_token_digest_tells_data_apart():
    a = torch.arange(64).view(8, 8)
    assert tokens_digest(a) == tokens_digest(a.clone())
    assert tokens_digest(a) != tokens_digest(a.flip(0))
    assert tokens_digest(a, ordered=False) == tokens_digest(a.flip(0), ordered=False)
    assert tokens_digest(a) != tokens_digest(a.view(4, 16))
