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


def test_weights_digest_follows_content_not_path():
    from darwin_modifier.artifacts import weights_digest
    from tests.conftest import tiny_model

    a, b = tiny_model(seed=0), tiny_model(seed=0)
    a.config._name_or_path, b.config._name_or_path = "/models/x", "../x"
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.model.layers[2].mlp.down_proj.weight[0, 0] += 1.0
    assert weights_digest(a) != weights_digest(b)
    assert weights_digest(a) != weights_digest(a.to(torch.bfloat16))


HOLD = """
import sys, time
from darwin_modifier.artifacts.lock import acquire
acquire(sys.argv[1], "search_dir", beside=len(sys.argv) > 2)
print("held", flush=True)
time.sleep(600)
"""


def test_a_directory_another_process_uses_is_refused_until_it_dies(tmp_path):
    import signal
    import subprocess
    import sys

    from darwin_modifier.artifacts.lock import acquire, release

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=f"in use by another run .*{holder.pid}"):
            acquire(tmp_path, "search_dir")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire(tmp_path, "search_dir")  # the kernel dropped the dead process's lock
    acquire(tmp_path, "search_dir")  # re-entrant within a process
    release(tmp_path)
    release(tmp_path)


def _checkpoint(directory, seed=0):
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "a.weight": torch.randn(4, 8, generator=gen),
        "b.weight": torch.randn(3, generator=gen).to(torch.bfloat16),
    }
    save_file(tensors, directory / "model.safetensors")
    (directory / "config.json").write_text('{"model_type": "llama"}')
    return directory


def test_a_sealed_checkpoint_verifies_and_every_change_is_named(tmp_path):
    from darwin_modifier.artifacts.checkpoint import seal, verify

    out = _checkpoint(tmp_path / "out")
    seal(out)
    assert verify(out) == []
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # last byte: inside the last tensor (b.weight)
    weights.write_bytes(bytes(data))
    assert verify(out) == ["model.safetensors: 1 tensors differ (b.weight)"]
    weights.write_bytes(bytes(data[:-4]))
    assert (
        "model.safetensors is unreadable (tensor b.weight runs past" in verify(out)[0]
    )
    (out / "model.safetensors.index.json").write_text("{}")
    assert "model.safetensors.index.json is not part of the checkpoint" in verify(out)
    (out / "config.json").unlink()
    assert "config.json is missing" in verify(out)
    (out / "darwinlm_checkpoint.json").unlink()
    assert "was not saved by darwin-modifier" in verify(out)[0]


def test_the_output_appears_whole_and_replaces_only_our_own(tmp_path):
    from darwin_modifier.artifacts.checkpoint import verify
    from darwin_modifier.artifacts.output import publishing

    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    with pytest.raises(ValueError, match="not empty and is not a checkpoint saved by"):
        with publishing(out):
            raise AssertionError("refused before the work starts")
    (out / "notes").rmdir()

    with publishing(out) as staging:  # an older sharded save of ours
        _checkpoint(staging, seed=0)
        (staging / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):  # a run that dies keeps the old output
        with publishing(out) as staging:
            _checkpoint(staging, seed=1)
            raise KeyboardInterrupt
    assert verify(out) == [] and (out / "model.safetensors.index.json").exists()
    with publishing(out) as staging:  # the next one replaces it whole
        _checkpoint(staging, seed=1)
    assert verify(out) == [] and not (out / "model.safetensors.index.json").exists()
    # no .partial or .replaced left; the lock that keeps other runs off stays beside
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]

    out.rename(tmp_path / "out.replaced")  # killed between the two renames
    with publishing(out) as staging:
        assert (out / "config.json").exists()  # the previous checkpoint is back
        _checkpoint(staging, seed=2)
    assert verify(out) == []


def test_two_runs_never_publish_to_one_output_at_once(tmp_path):
    import signal
    import subprocess
    import sys

    from darwin_modifier.artifacts.output import publishing

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "out"), "beside"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RuntimeError, match="output_dir .*/out is in use by another"
        ):
            with publishing(tmp_path / "out"):
                raise AssertionError("refused before the work starts")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not (tmp_path / "out.partial").exists()
