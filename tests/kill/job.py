"""A small real job for the kill tests, and the points where it can be killed.

The job is a three-stage recipe on a tiny Llama through ``run_oneshot_stages`` (what
``darwin-modifier compress`` runs): DarwinLM (database, 2 generations, shrink), then
post-training with a checkpoint every 2 steps, then W8A8 quantization; every stage
saved (``save_stages``). :func:`run` arms at most one of :data:`POINTS`: the process
sends itself SIGKILL there (no ``finally``, no ``atexit``: what a power cut or the OOM
killer leaves).
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path

import torch
from llmcompressor.entrypoints.oneshot import Oneshot
from transformers import PreTrainedModel

from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.modifier.chain import run_oneshot_stages
from darwin_modifier.search.fitness import TrainedKL

RECIPE = """
darwin_stage:
  darwin_modifiers:
    DarwinLMModifier:
      target_fraction: 0.5
      database_dir: db
      search_dir: search
      mlp_multiple: 8
      generations: 2
      offspring: 3
      selection_stages:
        - {survivors: 2, train_tokens: 32, fitness_tokens: 64}
        - {survivors: 1, train_tokens: 32, fitness_tokens: 64}
      search_seq_len: 32
      fitness_pool_tokens: 256
      train_pool_tokens: 256
train_stage:
  train_modifiers:
    DarwinLMTrainingModifier:
      tokens: 512
      seq_len: 64
      learning_rate: 3.0e-3
      warmup_steps: 2
      bf16_autocast: false
      checkpoint_every: 2
      train_dir: train
quant_stage:
  quant_modifiers:
    QuantizationModifier: {scheme: W8A8, targets: [Linear], ignore: [lm_head]}
"""


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at_call(
    owner, name: str, nth: int, before: bool, matches: Callable[..., bool]
) -> None:
    """SIGKILL at the ``nth`` call of ``owner.name`` whose arguments ``matches``:
    just before it runs, or just after it returns."""
    original = getattr(owner, name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        hit = False
        if matches(*args, **kwargs):
            calls += 1
            hit = calls == nth
        if hit and before:
            _die()
        result = original(*args, **kwargs)
        if hit:
            _die()
        return result

    setattr(owner, name, wrapper)


def _rename(file_name: str, nth: int = 1, before: bool = True) -> tuple:
    """The ``nth`` atomic rename that publishes ``file_name``: just before it (the
    ``.partial`` complete on disk, the file itself not yet replaced) or just after."""

    def publishes(source, target, *args, **kwargs) -> bool:
        return Path(target).name == file_name

    return (os, "replace", nth, before, publishes)


def _always(*args, **kwargs) -> bool:
    return True


# name -> (owner, function, nth call, before it runs?, which calls count), in the
# order a run reaches them: each killed rerun resumes and dies at the next one
POINTS = {
    # database
    "layer file half-written": _rename("layer_001.safetensors"),
    "layer written, not in the manifest": (
        DatabaseStore,
        "write_layer_file",
        1,
        False,
        lambda store, index, levels: index == 2,
    ),
    "manifest half-written": _rename("manifest.json"),
    # search
    "mid-generation": (TrainedKL, "__call__", 2, True, _always),
    "state saved, log not yet": _rename("search_log.jsonl"),
    "state half-written": _rename("search_state.json"),
    # stages, post-training, the save
    "between stages": (Oneshot, "__call__", 1, False, _always),
    "training checkpoint half-written": _rename("trainer_checkpoint.pt"),
    "between training checkpoints": _rename("trainer_checkpoint.pt", 2, before=False),
    "during the final save": (PreTrainedModel, "save_pretrained", 3, False, _always),
    # only where a previous output exists: it has been moved aside, the new one not
    # yet moved in
    "mid-swap of the output": _rename("out"),
}


def run(model: Path, work: Path, kill: str | None = None, log: str = "run.log"):
    """The job in ``work`` (relative paths, so two runs in two directories save the
    same files); with ``kill``, the process dies at that point."""
    os.chdir(work)
    with open(log, "ab") as out:  # the parent's pytest capture is not ours
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    torch.set_num_threads(1)  # the same arithmetic in every process
    if kill is not None:
        _kill_at_call(*POINTS[kill])
    run_oneshot_stages(
        model, RECIPE, "out", num_samples=8, seq_len=64, save_stages=True
    )
