"""One small DarwinLM job (tiny Llama: database, 2 generations, shrink, save) for the
torchrun tests, started as ``python job.py DIR`` or under ``torchrun``.

Every file write the tests care about is appended to ``DIR/writes.log`` as
``<rank> <what> <index>`` once written (``<rank> start`` opens each run).
``--kill-layer N`` / ``--kill-generation G`` make rank 1 SIGKILL itself before writing
database layer N / scoring a candidate of generation G's second stage (after one
exchange of fitness values in that generation, so rank 0 has saved generation G - 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))

from darwin_modifier.database.store import DatabaseStore  # noqa: E402
from darwin_modifier.distributed import rank  # noqa: E402
from darwin_modifier.modifier.chain import run_oneshot_stages  # noqa: E402
from darwin_modifier.search import evolution  # noqa: E402
from darwin_modifier.search.fitness import TrainedKL  # noqa: E402
from tests.modifier.test_oneshot import RECIPE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("--kill-layer", type=int)
    parser.add_argument("--kill-generation", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same arithmetic in every process
    log = args.dir / "writes.log"

    def logged(what, original, index=lambda *a: ""):
        def wrapper(*a, **k):
            result = original(*a, **k)
            with open(log, "a") as f:
                f.write(f"{rank()} {what} {index(*a)}\n")
            return result

        return wrapper

    def kill_if(condition: bool) -> None:
        if condition and rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    write_layer_file = DatabaseStore.write_layer_file

    def write_layer(store, index, levels):
        kill_if(index == args.kill_layer)
        return write_layer_file(store, index, levels)

    DatabaseStore.write_layer_file = logged("layer", write_layer, lambda s, i, _: i)
    DatabaseStore._write_manifest = logged("manifest", DatabaseStore._write_manifest)
    evolution._save_state = logged("state", evolution._save_state)
    search_step = importlib.import_module("darwin_modifier.pipeline.search")
    search_step.write_report = logged("report", search_step.write_report)
    score = TrainedKL.__call__

    def scored(self, genome, generation, stage):
        kill_if(generation == args.kill_generation and stage == 1)
        return score(self, genome, generation, stage)

    TrainedKL.__call__ = scored

    with open(log, "a") as f:
        f.write(f"{os.environ.get('RANK', '0')} start -\n")  # no group yet
    recipe = RECIPE.format(db=args.dir / "db", search=args.dir / "search")
    model = args.dir.parent / "model"
    run_oneshot_stages(model, recipe, args.dir / "out", num_samples=8, seq_len=64)


if __name__ == "__main__":
    main()
