"""Kill anywhere, rerun the same job, get the identical result.

One uninterrupted run of :mod:`tests.kill.job` is the reference. A second job is
SIGKILLed at every point of :data:`~tests.kill.job.POINTS` in turn, each kill in a
fresh rerun that resumes what the previous one left: database, search, stages,
post-training, the save. After the last rerun its saved checkpoints (every stage's),
search log, result and training history equal the reference's, every tensor bit for
bit. Then a rerun dies mid-swap of the published output: the previous checkpoint is
still whole, and the next rerun publishes the same one again.

Runs are forked from a server that has imported LLM Compressor once (a fresh
interpreter would spend ~10 s importing for each of the 14 runs).
"""

from __future__ import annotations

import json
import multiprocessing
import signal
from pathlib import Path

import pytest

from darwin_modifier.artifacts.checkpoint import MANIFEST, verify
from tests.conftest import save_tiny_checkpoint
from tests.kill.job import POINTS


@pytest.fixture(scope="module")
def runner():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.kill.job"])

    def run(model: Path, work: Path, kill: str | None = None) -> int:
        from tests.kill import job

        work.mkdir(exist_ok=True)
        process = context.Process(target=job.run, args=(model, work, kill))
        process.start()
        process.join(timeout=600)
        return process.exitcode

    return run


def outcome(work: Path) -> dict:
    """What a user keeps of a run: every file of the published output (sizes, and
    each tensor's hash), the search's log and result, the training history."""
    assert verify(work / "out") == []
    return {
        "checkpoint": json.loads((work / "out" / MANIFEST).read_text())["files"],
        "search_log": (work / "search" / "search_log.jsonl").read_text(),
        "result": json.loads((work / "search" / "result.json").read_text()),
        "training": json.loads((work / "train" / "posttrain_history.json").read_text()),
    }


def test_killed_anywhere_the_rerun_gives_the_identical_result(tmp_path, runner):
    model = save_tiny_checkpoint(tmp_path / "model")
    assert runner(model, tmp_path / "reference") == 0
    reference = outcome(tmp_path / "reference")
    assert len(reference["result"]["fitness"]) == 2  # both generations ran

    work = tmp_path / "killed"
    for point in list(POINTS)[:-1]:
        code = runner(model, work, point)
        assert code == -signal.SIGKILL, f"the run never reached {point!r} ({code})"
    assert runner(model, work) == 0
    assert outcome(work) == reference

    # the output is replaced only whole: killed between moving the old one aside
    # and moving the new one in, the rerun finds the old one and publishes again
    assert runner(model, work, "mid-swap of the output") == -signal.SIGKILL
    assert not (work / "out").exists() and (work / "out.replaced").is_dir()
    assert runner(model, work) == 0
    assert outcome(work) == reference
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("out")) == ["out"]
