"""What must not run (or not run twice) under torchrun is refused, with the fix."""

from __future__ import annotations

import pytest

from darwin_modifier.cli import main
from darwin_modifier.distributed import ranks, require_process_group
from darwin_modifier.modifier.base import _refuse_repeated_shares
from darwin_modifier.modifier.posttrain import refuse_distributed_training


def test_torchrun_without_a_process_group_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="init_from_env"):
        require_process_group()
    monkeypatch.setenv("WORLD_SIZE", "1")
    require_process_group()


def test_ranks_calibrating_on_the_same_samples_are_refused():
    _refuse_repeated_shares([["a", "b"], ["c", "d"]])
    with pytest.raises(ValueError, match="ranks 0 and 1 .*shard"):
        _refuse_repeated_shares([["a", "b"], ["b", "a"]])


def test_post_training_refuses_to_run_on_every_rank(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ranks, "world_size", lambda: 2)
    with pytest.raises(RuntimeError, match="post-training .* one process"):
        refuse_distributed_training()
    argv = ["train", "--model", str(tiny_dir), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    assert not (tmp_path / "o").exists()  # refused before any work
