"""torchrun with two gloo processes against one process: the same database (written
once, each layer by its owner rank), the same search result, and a resume after one
rank is killed in the database build and again in the search."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import save_tiny_checkpoint

JOB = Path(__file__).with_name("job.py")


def run_job(
    directory: Path, *flags: str, ranks: int = 1
) -> subprocess.CompletedProcess:
    directory.mkdir(exist_ok=True)
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={ranks}"]
    return subprocess.run(
        [*launcher, str(JOB), str(directory), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # loguru and torchrun's report, in order
        text=True,
        timeout=600,
    )


def writes_per_run(directory: Path) -> list[list[tuple[int, str, str]]]:
    """The files each run wrote, as (rank, what, index), split at the runs' starts."""
    lines = (directory / "writes.log").read_text().split("\n")
    runs: list[list[tuple[int, str, str]]] = []
    for r, what, index in (line.split(" ") for line in lines if line):
        if what == "start":
            if r == "0":
                runs.append([])
            continue
        runs[-1].append((int(r), what, index))
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    save_tiny_checkpoint(root / "model")
    single = run_job(root / "single")
    assert single.returncode == 0, single.stdout[-3000:]
    two = root / "two"
    killed = [
        run_job(two, "--kill-layer", "3", ranks=2),
        run_job(two, "--kill-generation", "1", ranks=2),
    ]
    resumed = run_job(two, ranks=2)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    return root, killed, resumed


def test_killed_ranks_fail_the_run_and_the_rerun_resumes(runs):
    root, killed, resumed = runs
    assert all(run.returncode != 0 for run in killed)
    assert "resuming, " in killed[1].stdout  # the database after the layer-3 kill
    assert "resuming at generation 1" in resumed.stdout


def test_the_database_equals_the_single_process_one(runs):
    root = runs[0]
    one, two = root / "single" / "db", root / "two" / "db"
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, two)]
    assert manifests[0]["calibration"] == manifests[1]["calibration"]
    assert manifests[0]["layers"].keys() == manifests[1]["layers"].keys()
    for index, stats in manifests[0]["layers"].items():
        for module, levels in stats.items():
            other = manifests[1]["layers"][index][module]
            assert [lv["params"] for lv in levels] == [lv["params"] for lv in other]
            losses = pytest.approx([lv["loss"] for lv in other], rel=1e-4, abs=1e-6)
            assert [lv["loss"] for lv in levels] == losses
    for layer in sorted(one.glob("layer_*.safetensors")):
        a, b = load_file(layer), load_file(two / layer.name)
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith(".kept"):
                assert torch.equal(a[key], b[key]), (layer.name, key)
            else:
                torch.testing.assert_close(
                    a[key].float(), b[key].float(), rtol=1e-3, atol=1e-3
                )


def test_every_shared_file_has_one_writer(runs):
    root = runs[0]
    killed_in_build, killed_in_search, final = writes_per_run(root / "two")
    everything = killed_in_build + killed_in_search + final
    layers = Counter((r, int(i)) for r, what, i in everything if what == "layer")
    assert {index for _, index in layers} == set(range(4))
    assert all(r == index % 2 for r, index in layers)  # the owner rank only
    # within a run each layer is written once; a resumed run rewrites only what the
    # manifest had not yet listed (at most the last subgraph's layers)
    for run in (killed_in_build, killed_in_search):
        per_layer = Counter(i for _, what, i in run if what == "layer")
        assert set(per_layer.values()) <= {1}
    assert not [w for w in final if w[1] == "layer"]  # the database was complete
    others = {what for r, what, _ in everything if r != 0 and what != "layer"}
    assert not others  # manifest, search state and report: the main rank only


def test_the_search_ends_at_the_single_process_genome(runs):
    root = runs[0]
    runs_of = ("single", "two")
    results = [
        json.loads((root / d / "search" / "result.json").read_text()) for d in runs_of
    ]
    assert results[0]["darwinlm"]["genome"] == results[1]["darwinlm"]["genome"]
    assert results[0]["fitness"] == pytest.approx(results[1]["fitness"], rel=1e-5)
    saved = [
        load_file(root / d / "out" / "model.safetensors") for d in ("single", "two")
    ]
    assert saved[0].keys() == saved[1].keys()
